"""Inference latency of the eager model, StaticFCOS compiled, and the exported program.

    python -m benchmarks.bench_export [--quick] [--batches 1 8] [--sizes 192 512]
                                      [--no-readme] [--results-dir DIR]

The network of the demo (``synthetic.yaml``: ResNet-18, FPN width 128, 3 classes), with
random weights and a head whose scores put thousands of candidates through NMS (as a
model early in training, the costly case), at the demo's 192 px and at 512 px, batch 1
and 8, one run:

* ``eager``: ``FCOS`` in eval mode on a list of images (resize, post-processing with the
  dynamic ops, per-image dicts): the baseline;
* ``static``: ``StaticFCOS`` eager (fixed-size ops, padded outputs);
* ``compiled``: ``torch.compile(StaticFCOS, fullgraph=True)`` (Inductor);
* ``exported``: the ``torch.export`` program saved and loaded back (``torch.export.load``);
* on a GPU also ``cuda_graphs``: ``torch.compile(..., mode="reduce-overhead")``.

Compilation and the first calls are warm-up, not timed. Rows (the harness's format) are
appended to ``benchmarks/results/export/<device>.json``; ``<device>.md`` gets the table
of the latest run (median and 20-80% quantiles, speed-up = eager median / this median,
same run) and README.md's export block is refreshed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import (device_name, fill_readme_block, quantiles, synchronize,
                                versions, write_atomically)
from fcos_fast.config import load_config
from fcos_fast.engine.build import build_model
from fcos_fast.export import StaticFCOS

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "export"
README = Path(__file__).resolve().parent.parent / "README.md"
README_BEGIN = "<!-- export-latency:begin -->"
README_END = "<!-- export-latency:end -->"
NUM_CLASSES = 3
BASELINE = "eager"


def demo_model(size: int, device: torch.device):
    """The demo's network for ``size`` px square images, random weights; the class prior
    0.1 (scores near 0.22, above the 0.05 threshold everywhere) and boxes 4 strides wide,
    so NMS has work to do."""
    torch.manual_seed(0)
    config = load_config("synthetic.yaml", [f"input.min_size_test={size}",
                                            f"input.max_size_test={size}"])
    model = build_model(config, NUM_CLASSES, load_backbone_weights=False)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(-math.log((1 - 0.1) / 0.1))
        model.head.box_regression.bias.fill_(2.0)
    return model.to(device).eval()


def time_call(fn, device: torch.device, budget_s: float, max_rounds: int = 50,
              warmup: int = 2) -> tuple[float, float, float]:
    """(median, q20, q80) in ms of ``fn`` after ``warmup`` calls, as many rounds as fit
    ``budget_s`` (at least 3)."""
    for _ in range(warmup):
        fn()
        synchronize(device)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 3 or (len(samples) < max_rounds
                               and time.perf_counter() - start < budget_s):
        begin = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - begin)
    return quantiles(samples)


def variants(model, images: torch.Tensor, folder: Path) -> dict:
    """``{name: zero-argument callable}`` for one batch of ``images``."""
    as_list = list(images)
    static = StaticFCOS(model)
    path = folder / f"model-{images.shape[0]}-{images.shape[-1]}.pt2"
    torch.export.save(torch.export.export(static, (images,)), path)
    program = torch.export.load(path).module()
    torch._dynamo.reset()
    compiled = torch.compile(static, fullgraph=True)
    calls = {
        "eager": torch.no_grad()(lambda: model(as_list)),
        "static": lambda: static(images),
        "compiled": lambda: compiled(images),
        "exported": torch.no_grad()(lambda: program(images)),
    }
    if images.device.type == "cuda":
        graphed = torch.compile(StaticFCOS(model), fullgraph=True, mode="reduce-overhead")
        # (StaticFCOS runs under no_grad itself; its outputs are overwritten by the next
        # replay, which timing does not mind.)
        calls["cuda_graphs"] = lambda: graphed(images)
    return calls


def markdown(rows: list[dict]) -> str:
    run = rows[0]
    lines = [f"**{run['device']}** — run {run['run']} ({run['version']}). Median of repeated "
             "calls (20th–80th percentile) after warm-up (compilation excluded); speed-up = "
             "eager model median / this median, same run.", "",
             "| size | variant | median ms (q20–q80) | speed-up |", "| --- | --- | --- | --- |"]
    base = {row["size"]: row["median"] for row in rows if row["backend"] == BASELINE}
    for row in rows:
        speedup = ("baseline" if row["backend"] == BASELINE
                   else f"**{base[row['size']] / row['median']:.2f}×**")
        lines.append(f"| {row['size']} | {row['backend']} | {row['median']:.3g} "
                     f"({row['q20']:.3g}–{row['q80']:.3g}) | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.3 s of timing per case")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 512])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = 0.3 if args.quick else 2.0
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    label, version = device_name(device), versions()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            model = demo_model(size, device)
            for batch in args.batches:
                images = torch.rand(batch, 3, size, size,
                                    generator=torch.Generator().manual_seed(batch)).to(device)
                for name, call in variants(model, images, Path(folder)).items():
                    median, q20, q80 = time_call(call, device, budget)
                    rows.append({"op": "fcos_inference", "backend": name,
                                 "mode": device.type, "metric": "time", "unit": "ms",
                                 "size": f"B={batch} {size}px", "median": median,
                                 "q20": q20, "q80": q80, "device": label,
                                 "version": version, "run": run_id})
                    print(json.dumps(rows[-1]), flush=True)
    results = args.results_dir / f"{label}.json"
    history = json.loads(results.read_text()) if results.exists() else []
    write_atomically(results, json.dumps(history + rows, indent=1) + "\n")
    table = markdown(rows)
    write_atomically(args.results_dir / f"{label}.md", table)
    print(table)
    if not args.no_readme and args.results_dir == RESULTS_DIR:
        fill_readme_block(README, README_BEGIN, README_END, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
