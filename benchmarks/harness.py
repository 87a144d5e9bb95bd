"""Timing, device naming and the results file shared by the benchmark suites.

A benchmark row (one per op, backend, mode, metric and size, Liger-Kernel style)::

    {"op", "backend", "mode", "metric", "unit", "size", "median", "q20", "q80",
     "device", "version", "run"}

``run`` identifies one invocation of the suites: speed-ups are only ever computed
between rows of the same run, i.e. measured back to back on the same machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import fcos_fast

RESULTS_DIR = Path(os.environ.get("FCOS_FAST_BENCH_DIR", Path(__file__).parent / "results"))
RUN_ID = os.environ.get("FCOS_FAST_BENCH_RUN") or time.strftime("%Y-%m-%dT%H:%M:%S")


def bench_device() -> torch.device:
    """Benchmarks run on the GPU when there is one, else on the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """A file-name-safe description of the device, e.g. ``nvidia-h100-80gb-hbm3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                for line in cpuinfo:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1]
                        break
        except OSError:
            pass
        name = f"cpu {name} {torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> str:
    import triton  # noqa: PLC0415  (optional at import time of this module)

    return (f"fcos_fast {fcos_fast.__version__}, torch {torch.__version__}, "
            f"triton {triton.__version__}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(samples_s: list[float]) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) in milliseconds."""
    ordered = torch.tensor(samples_s, dtype=torch.float64) * 1e3
    q = torch.quantile(ordered, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def rehearsing() -> bool:
    """``benchmarks.run --rehearse``: every benchmark once, at its first size, one round."""
    return os.environ.get("FCOS_FAST_BENCH_REHEARSE") == "1"


def run_benchmark(benchmark, fn: Callable[[], object], device: torch.device, *,
                  budget_s: float | None = None,
                  max_rounds: int = 50) -> tuple[float, float, float]:
    """Time ``fn`` with pytest-benchmark, synchronising the device around each call.

    The number of rounds fits a time budget (at least 3), since the slow baselines take
    seconds a call on CPU: ``budget_s``, else ``$FCOS_FAST_BENCH_BUDGET_S`` (which
    ``benchmarks.run --quick`` sets), else 1.5 s.
    """
    if budget_s is None:
        budget_s = float(os.environ.get("FCOS_FAST_BENCH_BUDGET_S", "1.5"))

    def timed():
        result = fn()
        synchronize(device)
        return result

    start = time.perf_counter()
    timed()  # warm-up: compilation, autotuning, allocator
    once = max(time.perf_counter() - start, 1e-6)
    rounds = int(min(max_rounds, max(3, budget_s / once)))
    if rehearsing():
        rounds = 1
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    return quantiles(list(benchmark.stats.stats.data))


class Results:
    """Collects rows during a session and appends them to ``results/<device>.json``."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, *, op: str, backend: str, mode: str, metric: str, unit: str, size: str,
            median: float, q20: float | None = None, q80: float | None = None,
            device: torch.device) -> None:
        self.rows.append({
            "op": op, "backend": backend, "mode": mode, "metric": metric, "unit": unit,
            "size": size, "median": median, "q20": median if q20 is None else q20,
            "q80": median if q80 is None else q80, "device": device_name(device),
            "version": versions(), "run": RUN_ID,
        })

    def save(self) -> list[Path]:
        written = []
        for device in sorted({row["device"] for row in self.rows}):
            path = RESULTS_DIR / f"{device}.json"
            existing = json.loads(path.read_text()) if path.exists() else []
            rows = existing + [row for row in self.rows if row["device"] == device]
            write_atomically(path, json.dumps(rows, indent=1) + "\n")
            written.append(path)
        return written


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def fill_readme_block(readme: Path, begin: str, end: str, content: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``readme``."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} block to fill")
    block = f"{begin}\n{content}{end}"
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    write_atomically(readme, re.sub(pattern, lambda _: block, text, flags=re.S))


def save_run(rows: list[dict], table: str, results_dir: Path, label: str, *,
             readme_block: tuple[Path, str, str] | None = None) -> None:
    """A standalone benchmark's run: ``rows`` appended to ``<results_dir>/<label>.json``,
    ``table`` (its markdown) as ``<label>.md``, and, with ``readme_block`` ``(readme,
    begin, end)``, the README block between those markers refreshed."""
    results = results_dir / f"{label}.json"
    history = json.loads(results.read_text()) if results.exists() else []
    write_atomically(results, json.dumps(history + rows, indent=1) + "\n")
    write_atomically(results_dir / f"{label}.md", table)
    if readme_block is not None:
        fill_readme_block(*readme_block, table)
