"""Inference latency of the eager model, StaticFCOS compiled, and the exported program,
in float32 and at the precision ``auto`` picks (bfloat16 on an AVX512-BF16/AMX CPU or an
Ampere+ GPU).

    python -m benchmarks.bench_export [--quick] [--batches 1 8] [--sizes 192 512]
                                      [--voc-batches 8] [--precisions fp32 auto]
                                      [--no-readme] [--results-dir DIR]

Two networks, one run:

* the demo's (``synthetic.yaml``: ResNet-18, FPN width 128, 3 classes) with random
  weights and a head whose scores put thousands of candidates through NMS (as a model
  early in training, the costly case), at the demo's 192 px and at 512 px, batch 1 and 8;
* ``voc_r18.yaml``'s (ResNet-18, FPN 128, 20 classes) on 375x500 images (a typical VOC
  size) at its input size, 512x682, batch 8 (the issue's case), random weights with a
  quiet head (class prior 0.001: next to no candidate above the threshold, as a trained
  detector on most points): the network's cost, where precision matters.

Per precision (``--precisions``: ``fp32`` and ``auto``; the model prepared as ``python -m
fcos_fast.evaluate`` prepares it: bfloat16 autocast with a channels-last backbone on the
CPU, post-processing in float32):

* ``eager``: ``FCOS`` in eval mode on a list of images (resize, post-processing with the
  dynamic ops, per-image dicts); float32 eager is the baseline of every ratio;
* ``static``: ``StaticFCOS`` eager (fixed-size ops, padded outputs);
* ``compiled``: ``torch.compile(StaticFCOS, fullgraph=True)`` (Inductor);
* ``exported``: the ``torch.export`` program saved and loaded back (``torch.export.load``;
  under bfloat16 the autocast region exported as its casts, ``export_static``);
* on a GPU also ``cuda_graphs``: ``torch.compile(..., mode="reduce-overhead")``.

Compilation and the first calls are warm-up, not timed. ``--quick``: 0.3 s of timing per
case and, unless given, only the demo network at 192 px, batch 2. Rows (the harness's
format, with a ``precision`` field) are appended to
``benchmarks/results/export/<device>.json``; ``<device>.md`` gets the table of the latest
run (median and 20-80% quantiles, speed-up = float32 eager median / this median, same
run) and README.md's export block is refreshed.
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

from benchmarks.harness import device_name, quantiles, save_run, synchronize, versions
from fcos_fast.config import load_config
from fcos_fast.engine.build import build_model
from fcos_fast.engine.precision import (inference_precision, resolve_precision,
                                        set_inference_memory_format)
from fcos_fast.export import StaticFCOS, export_static, model_input_size

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "export"
README = Path(__file__).resolve().parent.parent / "README.md"
README_BEGIN = "<!-- export-latency:begin -->"
README_END = "<!-- export-latency:end -->"
NUM_CLASSES = 3
BASELINE = ("eager", "fp32")
#: VOC's typical image (500x375), which voc_r18's resize makes 512x682.
VOC_IMAGE = (375, 500)


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


def voc_model(device: torch.device):
    """``voc_r18.yaml``'s network, random weights, class prior 0.001 (scores near 0.02,
    below the 0.05 threshold: next to no candidates)."""
    torch.manual_seed(0)
    config = load_config("voc_r18.yaml")
    model = build_model(config, 20, load_backbone_weights=False)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(-math.log((1 - 0.001) / 0.001))
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


def variants(model, images: torch.Tensor, folder: Path, precision) -> dict:
    """``{name: zero-argument callable}`` for one batch of ``images`` at ``precision``
    (the model's backbone already in that precision's memory format)."""
    as_list = list(images)
    static = StaticFCOS(model, precision=precision)
    path = folder / f"model-{images.shape[0]}-{images.shape[-1]}-{precision.name}.pt2"
    torch.export.save(export_static(static, images), path)
    program = torch.export.load(path).module()
    torch._dynamo.reset()
    compiled = torch.compile(static, fullgraph=True)

    @torch.no_grad()
    def eager():
        with precision.autocast():
            return model(as_list)

    calls = {
        "eager": eager,
        "static": lambda: static(images),
        "compiled": lambda: compiled(images),
        "exported": torch.no_grad()(lambda: program(images)),
    }
    if images.device.type == "cuda":
        graphed = torch.compile(StaticFCOS(model, precision=precision), fullgraph=True,
                                mode="reduce-overhead")
        # (StaticFCOS runs under no_grad itself; its outputs are overwritten by the next
        # replay, which timing does not mind.)
        calls["cuda_graphs"] = lambda: graphed(images)
    return calls


def markdown(rows: list[dict]) -> str:
    run = rows[0]
    lines = [f"**{run['device']}** — run {run['run']} ({run['version']}). Median of repeated "
             "calls (20th–80th percentile) after warm-up (compilation excluded); speed-up = "
             "float32 eager model median / this median, same run.", "",
             "| size | precision | variant | median ms (q20–q80) | speed-up |",
             "| --- | --- | --- | --- | --- |"]
    base = {row["size"]: row["median"] for row in rows
            if (row["backend"], row["precision"]) == BASELINE}
    for row in rows:
        speedup = ("baseline" if (row["backend"], row["precision"]) == BASELINE
                   else f"**{base[row['size']] / row['median']:.2f}×**")
        precision = row["precision"] + (", channels-last" if row.get("channels_last") else "")
        lines.append(f"| {row['size']} | {precision} | {row['backend']} | {row['median']:.3g} "
                     f"({row['q20']:.3g}–{row['q80']:.3g}) | {speedup} |")
    return "\n".join(lines) + "\n"


def cases(args, device: torch.device):
    """``(size label, model, images)``: the demo network at each size and batch, then
    voc_r18's at each ``--voc-batches``."""
    for size in args.sizes:
        model = demo_model(size, device)
        for batch in args.batches:
            yield f"B={batch} {size}px", model, torch.rand(
                batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
    if args.voc_batches:
        model = voc_model(device)
        height, width = model_input_size(model, *VOC_IMAGE)
        for batch in args.voc_batches:
            yield f"voc_r18 B={batch} {height}x{width}", model, torch.rand(
                batch, 3, height, width, generator=torch.Generator().manual_seed(batch)
            ).to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="0.3 s of timing per case; unless given, --sizes 192 --batches 2 "
                             "and no voc_r18 case")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="demo network batches (default 1 8)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="demo network image sizes (default 192 512)")
    parser.add_argument("--voc-batches", type=int, nargs="*", default=None,
                        help="voc_r18 network batches (default 8; none: no voc_r18 case)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        help="fp32, auto (what --precision auto picks here), bf16, fp16")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = args.sizes or ([192] if quick else [192, 512])
    args.batches = args.batches or ([2] if quick else [1, 8])
    if args.voc_batches is None:
        args.voc_batches = [] if quick else [8]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = []
    for setting in args.precisions:  # float32 first: the baseline
        precision = (resolve_precision(setting, device) if setting == "fp32"
                     else inference_precision(setting, device))
        if precision not in precisions:
            precisions.append(precision)
    if resolve_precision("fp32", device) not in precisions:
        precisions.insert(0, resolve_precision("fp32", device))
    budget = 0.3 if quick else 2.0
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    label, version = device_name(device), versions()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size, model, images in cases(args, device):
            for precision in precisions:
                channels_last = set_inference_memory_format(model, precision)
                for name, call in variants(model, images, Path(folder), precision).items():
                    median, q20, q80 = time_call(call, device, budget)
                    rows.append({"op": "fcos_inference", "backend": name,
                                 "precision": precision.name, "channels_last": channels_last,
                                 "mode": device.type, "metric": "time", "unit": "ms",
                                 "size": size, "median": median, "q20": q20, "q80": q80,
                                 "device": label, "version": version, "run": run_id})
                    print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    print(table)
    save_run(rows, table, args.results_dir, label, readme_block=(
        None if args.no_readme or args.results_dir != RESULTS_DIR
        else (README, README_BEGIN, README_END)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
