"""Turn ``benchmarks/results/<device>.json`` into a markdown table and a PNG plot.

Speed-ups are computed only within one run (rows measured back to back), against the
baseline each op replaces: torchvision's code, or a per-class ``torch.topk`` loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from collections import defaultdict
from pathlib import Path

from benchmarks.harness import RESULTS_DIR, write_atomically

BASELINES = {"torchvision", "topk_loop"}
BACKEND_ORDER = ["torchvision", "topk_loop", "composition", "reference", "native", "triton"]
README = Path(__file__).resolve().parent.parent / "README.md"
README_BEGIN = "<!-- benchmarks:begin -->"
README_END = "<!-- benchmarks:end -->"


def latest_run(rows: list[dict]) -> list[dict]:
    """Per case (op, mode, size), the rows of the latest run that measured it: a run of
    some suites (``benchmarks.run -k``) replaces their cases and keeps the others, and
    every ratio stays within one run."""
    last: dict[tuple, str] = {}
    for row in rows:
        key = (row["op"], row["mode"], row["size"])
        last[key] = max(last.get(key, row["run"]), row["run"])
    return [row for row in rows if row["run"] == last[(row["op"], row["mode"], row["size"])]]


def _groups(rows):
    """{(op, mode, size): {backend: {metric: row}}} in first-seen order."""
    groups: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        groups[(row["op"], row["mode"], row["size"])][row["backend"]][row["metric"]] = row
    return groups


def speedups(rows: list[dict]) -> list[dict]:
    """One record per (op, mode, size, backend): median, quantiles, speed-up, memory."""
    records = []
    for (op, mode, size), backends in _groups(rows).items():
        baseline = next((b for b in backends if b in BASELINES), None)
        base_ms = backends[baseline]["time"]["median"] if baseline else None
        for backend in sorted(backends, key=lambda b: BACKEND_ORDER.index(b)
                              if b in BACKEND_ORDER else 99):
            time_row = backends[backend].get("time")
            if time_row is None:
                continue
            memory = backends[backend].get("peak_memory")
            records.append({
                "op": op, "mode": mode, "size": size, "backend": backend,
                "median": time_row["median"], "q20": time_row["q20"], "q80": time_row["q80"],
                "speedup": base_ms / time_row["median"] if base_ms else None,
                "baseline": baseline, "run": time_row["run"],
                "memory_mb": memory["median"] if memory else None,
            })
    return records


def markdown(rows: list[dict]) -> str:
    runs = {row["run"]: row["version"] for row in rows}
    several = len(runs) > 1
    described = ", ".join(f"{run} ({version})" for run, version in sorted(runs.items()))
    lines = [
        f"**{rows[0]['device']}** — {'runs' if several else 'run'} {described}. Median of "
        "repeated calls (20th–80th percentile); speed-up = baseline median / this median, "
        "same run; peak extra memory during the call.",
        "",
        "| op | mode | size | backend | median ms (q20–q80) | speed-up | peak extra MB |"
        + (" run |" if several else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if several else ""),
    ]
    for r in speedups(rows):
        speedup = "baseline" if r["backend"] in BASELINES else (
            f"**{r['speedup']:.1f}×**" if r["speedup"] is not None else "–")
        memory = f"{r['memory_mb']:.1f}" if r["memory_mb"] is not None else "–"
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['size']} | {r['backend']} | "
            f"{r['median']:.3g} ({r['q20']:.3g}–{r['q80']:.3g}) | {speedup} | {memory} |"
            + (f" {r['run']} |" if several else ""))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = [r for r in speedups(rows) if r["backend"] not in BASELINES and r["speedup"]]
    labels = sorted({(r["op"], r["mode"], r["size"]) for r in records},
                    key=lambda k: [(x["op"], x["mode"], x["size"]) for x in records].index(k))
    backends = [b for b in BACKEND_ORDER if any(r["backend"] == b for r in records)]
    height = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    for i, backend in enumerate(backends):
        values = {(r["op"], r["mode"], r["size"]): r["speedup"] for r in records
                  if r["backend"] == backend}
        ys = [j + i * height for j, label in enumerate(labels) if label in values]
        xs = [values[label] for label in labels if label in values]
        ax.barh(ys, xs, height=height, label=backend)
    ax.set_yticks([j + height * (len(backends) - 1) / 2 for j in range(len(labels))])
    ax.set_yticklabels([f"{op} {mode} {size}" for op, mode, size in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up over the baseline (log scale; >1 is faster)")
    ax.set_title(f"fcos_fast kernels on {rows[0]['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_reports(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """For every results JSON, write ``<device>.md`` and ``<device>.png`` beside it."""
    written = []
    for json_path in sorted(results_dir.glob("*.json")):
        rows = json.loads(json_path.read_text())
        if not rows:
            continue
        rows = latest_run(rows)
        md_path = json_path.with_suffix(".md")
        write_atomically(md_path, markdown(rows))
        written.append(md_path)
        if importlib.util.find_spec("matplotlib") is None:  # e.g. a bare GPU machine
            print(f"matplotlib is not installed: no plot beside {md_path}")
            continue
        plot(rows, json_path.with_suffix(".png"))
        written.append(json_path.with_suffix(".png"))
    return written


def update_readme(results_dir: Path = RESULTS_DIR, readme: Path = README) -> None:
    """Replace the README's benchmark block with every device's table and plot."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_BEGIN} ... {README_END} block to fill")
    parts = []
    # Only the devices' tables (a results JSON beside them), not other notes kept in the
    # folder such as triton_launch_configs.md.
    for md_path in sorted(path.with_suffix(".md") for path in results_dir.glob("*.json")):
        if not md_path.exists():
            continue
        rel = md_path.relative_to(readme.parent)
        parts.append(md_path.read_text().strip())
        parts.append(f"\n![speed-ups on {md_path.stem}]({rel.with_suffix('.png')})\n")
    block = README_BEGIN + "\n" + "\n".join(parts) + "\n" + README_END
    pattern = re.escape(README_BEGIN) + ".*?" + re.escape(README_END)
    write_atomically(readme, re.sub(pattern, lambda _: block, text, flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--readme", action="store_true", help="also refresh README.md's table")
    args = parser.parse_args()
    for path in write_reports(args.results_dir):
        print(f"wrote {path}")
    if args.readme:
        update_readme(args.results_dir)
        print(f"updated {README}")


if __name__ == "__main__":
    main()
