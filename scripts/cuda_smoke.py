"""Every op on small inputs, edge cases included, through one backend: the program that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, synccheck).

    FCOS_FAST_BACKEND=native|triton python scripts/cuda_smoke.py [--device auto|cuda|cpu]

``--device auto`` (the default) is CUDA when a GPU is visible, else the CPU: there the
same calls run the C++ kernels or the Triton kernels under the interpreter, which is how
``gpu_check.sh --rehearse`` runs this program before a GPU ever sees it.

Value checks are off (FCOS_FAST_VALIDATE=0) so that NaN and inf reach the kernels, which
must neither crash nor touch memory out of bounds on them. Sizes sit on every boundary
the kernels branch on (0, 1, 63, 64, 65 boxes: one mask word and the next), batched_nms
gets many small categories beside one long one (more than 4096 boxes: the CUDA sweep
keeps that segment's removed set in global memory), the fixed-size ops get empty, full
and overflowing counts, and giou_loss takes its vector loads and, on a misaligned
tensor, its scalar ones. On the CPU the sizes are smaller (``Sizes``): the interpreter
runs a Triton program at a time. Correctness is the tests' job (pytest -m cuda); this
only runs the kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Run as `python scripts/cuda_smoke.py` from the repository root, the script's folder is
# first on the import path, not the root that holds `benchmarks`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Sizes:
    """The sizes past the kernels' boundaries: on a GPU past every one (a segment of more
    than 4096 boxes, 64 mask words), on the CPU past the word boundaries only."""

    largest: int          # boxes of the largest plain NMS case
    images: int           # post-processing's categories: images x classes
    classes: int
    long_segment: int     # one category of this many boxes beside them
    points: int           # top-k scores: points x classes
    topk_classes: int
    padded: tuple[tuple[int, int], ...]  # batched_nms_padded (segments, slots)


GPU_SIZES = Sizes(700, 4, 80, 4200, 3000, 80, ((0, 10), (5, 0), (1, 1), (30, 65), (3, 4200)))
CPU_SIZES = Sizes(150, 1, 6, 130, 300, 6, ((0, 10), (5, 0), (1, 1), (6, 65), (3, 130)))


def nms_cases(sizes: Sizes, g: torch.Generator):
    """(boxes, scores, idxs) on the CPU."""
    from benchmarks.cases import clustered_boxes, postprocess_candidates

    for n in (0, 1, 63, 64, 65, sizes.largest):
        yield (clustered_boxes(n, generator=g), torch.rand(n, generator=g),
               torch.randint(0, 7, (n,), generator=g))
    # Many small categories (images x classes) and one long one.
    boxes, scores, idxs = postprocess_candidates(batch=sizes.images, classes=sizes.classes,
                                                 per_class=20, generator=g)
    n = sizes.long_segment
    long_boxes = clustered_boxes(n, clusters=max(n // 40, 1), scale=800.0, generator=g)
    yield (torch.cat([boxes, long_boxes]), torch.cat([scores, torch.rand(n, generator=g)]),
           torch.cat([idxs, torch.full((n,), -1)]))
    boxes, scores = clustered_boxes(500, generator=g), torch.rand(500, generator=g)
    boxes[::7, 0] = NAN
    boxes[::11, 3] = INF
    boxes[::13] = NAN
    scores[::5] = NAN
    scores[1::5] = -NAN  # the sign bit set: sorted first all the same
    yield boxes, scores, torch.randint(0, 3, (500,), generator=g)


def run_nms(ops, backend: str, device: torch.device, sizes: Sizes, g: torch.Generator) -> None:
    for boxes, scores, idxs in nms_cases(sizes, g):
        boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
        for dtype in (torch.float32, torch.float64, torch.float16):
            b, s = boxes.to(dtype), scores.to(dtype)
            ops.nms(b, s, 0.5, backend=backend)
            ops.batched_nms(b, s, idxs, 0.5, backend=backend)


def run_giou_loss(ops, backend: str, device: torch.device, sizes: Sizes,
                  g: torch.Generator) -> None:
    from benchmarks.cases import random_boxes

    for n in (0, 1, 63, 64, 65, sizes.largest):
        for dtype in (torch.float32, torch.float64):
            pred = random_boxes(n, min_size=1.0, dtype=dtype, generator=g).to(device)
            target = random_boxes(n, dtype=dtype, generator=g).to(device)
            if n > 10:
                pred[3, 1] = NAN
                target[5, 2] = INF
            # Contiguous but one element off 16-byte alignment: the scalar-load path.
            misaligned = torch.empty(4 * n + 1, dtype=dtype, device=device)[1:].view(n, 4)
            misaligned.copy_(pred)
            for p in (pred, misaligned):
                for reduction in ("none", "mean", "sum"):
                    p = p.detach().requires_grad_(True)
                    loss = ops.giou_loss(p, target, reduction=reduction, backend=backend)
                    loss.sum().backward()


def topk_scores(sizes: Sizes, g: torch.Generator):
    for n, classes in ((0, 5), (1, 5), (sizes.largest, 5), (sizes.points, sizes.topk_classes)):
        scores = torch.rand(n, classes, generator=g)
        if n > 10:
            scores[::9, 1] = NAN
            scores[1::9, 2] = -NAN
        yield scores


def run_per_class_topk(ops, backend: str, device: torch.device, sizes: Sizes,
                       g: torch.Generator) -> None:
    for scores in topk_scores(sizes, g):
        for k in (0, 10, 5000):
            ops.per_class_topk(scores.to(device), k, 0.3, backend=backend)


def run_per_class_topk_padded(ops, backend: str, device: torch.device, sizes: Sizes,
                              g: torch.Generator) -> None:
    for scores in topk_scores(sizes, g):
        for k in (0, 10, 5000):
            ops.per_class_topk_padded(scores.to(device), k, 0.3, backend=backend)


def run_batched_nms_padded(ops, backend: str, device: torch.device, sizes: Sizes,
                           g: torch.Generator) -> None:
    from benchmarks.cases import clustered_boxes

    for segments, length in sizes.padded:
        n = segments * length
        boxes = clustered_boxes(n, clusters=max(n // 40, 1), scale=800.0, generator=g)
        boxes, scores = boxes.view(segments, length, 4), torch.rand(segments, length, generator=g)
        counts = torch.randint(0, length + 1, (segments,), generator=g)
        if segments >= 3:  # full, empty and out-of-range counts (clamped by the kernels)
            counts[0], counts[1], counts[2] = length, -3, 10**12
        if n > 100:
            boxes[:, ::7, 0] = NAN
            boxes[:, ::11, 3] = INF
            scores[:, ::5] = NAN
        idxs = torch.randint(0, 3, (segments, length), generator=g)
        for categories in (None, idxs):
            ops.batched_nms_padded(boxes.to(device), scores.to(device), counts.to(device), 0.5,
                                   None if categories is None else categories.to(device),
                                   backend=backend)


def run_fcos_assign(ops, backend: str, device: torch.device, sizes: Sizes,
                    g: torch.Generator) -> None:
    from benchmarks.cases import fcos_points, padded_gt, random_boxes

    points, lower, upper, radius, _, _ = fcos_points((100, 130), device=device)
    for counts in ([0, 0], [1, 5], [37, 0, 300]):
        gt, num_gt = padded_gt([random_boxes(c, scale=130.0, min_size=4.0, generator=g)
                                for c in counts])
        if gt.shape[1] > 2:
            gt[0, 1, 2] = NAN
        num_gt[-1] += 7  # more than the padded slots: clamped by the kernels
        ops.fcos_assign(points, lower, upper, radius, gt.to(device), num_gt.to(device),
                        backend=backend)


def run_sigmoid_focal_loss(ops, backend: str, device: torch.device, sizes: Sizes,
                           g: torch.Generator) -> None:
    """Rows that end inside a thread's 16 bytes (C = 3, 7), C = 1, logits one element off
    16-byte alignment (odd N: the scalar path), every dtype, weight or not, every
    reduction and both backward paths (the fused gradient, the backward kernel); NaN/inf
    logits and labels out of range."""
    for n, classes in ((0, 5), (1, 1), (63, 3), (64, 7), (65, 80), (sizes.points, 20)):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            flat = (torch.randn(n * classes + 1, generator=g) * 5).to(device, dtype)
            logits = (flat[1:] if n % 2 else flat[:-1]).view(n, classes)
            labels = torch.randint(-1, classes, (n,), generator=g)
            if n > 10:
                logits[3, 0] = NAN
                logits[5, -1] = INF
                labels[7] = classes + 5  # unchecked: a background row
            labels = labels.to(device)
            weight = torch.rand(n, generator=g).to(device, torch.promote_types(
                dtype, torch.float32))
            for reduction in ("none", "mean", "sum"):
                for w in (None, weight):
                    x = logits.detach().requires_grad_(True)
                    loss = ops.sigmoid_focal_loss(x, labels, weight=w, reduction=reduction,
                                                  gamma=2.0 if w is None else 1.5,
                                                  backend=backend)
                    loss.sum().backward()


RUNS = (run_nms, run_giou_loss, run_per_class_topk, run_per_class_topk_padded,
        run_batched_nms_padded, run_fcos_assign, run_sigmoid_focal_loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA when a GPU is visible, else the CPU")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cpu":
        # Before triton is first imported: the Triton kernels run interpreted on the CPU.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FCOS_FAST_VALIDATE", "0")  # read at each call
    from fcos_fast import ops

    backend = os.environ.get("FCOS_FAST_BACKEND", "native")
    if backend not in ops.available_backends(device):
        print(f"smoke: the {backend} backend cannot run on {device.type} here "
              f"(available: {ops.available_backends(device)})", file=sys.stderr)
        return 1
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    g = torch.Generator().manual_seed(0)
    for run in RUNS:
        run(ops, backend, device, sizes, g)
        if device.type == "cuda":
            torch.cuda.synchronize()  # an asynchronous kernel error surfaces at its op
        print(f"smoke ({backend} on {device.type}): {run.__name__[4:]} ok", flush=True)
    print(f"smoke ({backend} on {device.type}): every op ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
