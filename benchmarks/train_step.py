"""Time one training step of the default model in each precision and memory format.

    python -m benchmarks.train_step [--batch 8] [--size 192] [--steps 12]

The default config's model (``synthetic.yaml``) on random images with a few boxes each,
SGD step included; the median over ``--steps`` steps after two warm-up steps. It is how
the choices behind ``solver.amp: auto`` and ``solver.channels_last`` were measured:
float32 or bfloat16 autocast, and no channels-last, the backbone in channels-last (the
default), or the whole model in channels-last.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from fcos_fast.config import load_config
from fcos_fast.engine.build import build_model

FORMATS = ("contiguous", "backbone channels-last", "all channels-last")


def step_ms(precision: str, memory_format: str, *, batch: int, size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(load_config(None), 3).train()
    if memory_format == "backbone channels-last":
        model.backbone.to(memory_format=torch.channels_last)
    elif memory_format == "all channels-last":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = [torch.rand(3, size, size) for _ in range(batch)]
    box = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.3, 0.35, 0.8, 0.7]]) * size
    targets = [{"boxes": box, "labels": torch.tensor([0, 2])} for _ in range(batch)]
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with autocast:
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    print(f"training step, default model, batch {args.batch} at {args.size} px, "
          f"{torch.get_num_threads()} threads\n")
    print("| precision | memory format | median step ms |\n| --- | --- | --- |")
    for precision in ("fp32", "bf16"):
        for memory_format in FORMATS:
            ms = step_ms(precision, memory_format, batch=args.batch, size=args.size,
                         steps=args.steps)
            print(f"| {precision} | {memory_format} | {ms:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
