"""Every op on small CUDA inputs, edge cases included, through one backend: the program
that scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, synccheck).

    FCOS_FAST_BACKEND=native|triton python scripts/cuda_smoke.py

Value checks are off (FCOS_FAST_VALIDATE=0) so that NaN and inf reach the kernels, which
must neither crash nor touch memory out of bounds on them. Sizes sit on every boundary
the kernels branch on (0, 1, 63, 64, 65 boxes: one mask word and the next), and
batched_nms gets many small categories beside one long one (more than 4096 boxes: the
CUDA sweep keeps that segment's removed set in global memory). Correctness is the
tests' job (pytest -m cuda); this only runs the kernels.
"""

from __future__ import annotations

import os

import torch

from benchmarks.cases import (clustered_boxes, fcos_points, padded_gt, postprocess_candidates,
                              random_boxes)
from fcos_fast import ops

NAN, INF = float("nan"), float("inf")


def nms_cases(g: torch.Generator):
    """(boxes, scores, idxs) on the CPU."""
    for n in (0, 1, 63, 64, 65, 700):
        yield (clustered_boxes(n, generator=g), torch.rand(n, generator=g),
               torch.randint(0, 7, (n,), generator=g))
    # Many small categories (a batch of 4 images x 80 classes) and one long one.
    boxes, scores, idxs = postprocess_candidates(batch=4, classes=80, per_class=20, generator=g)
    long_boxes = clustered_boxes(4200, clusters=100, scale=800.0, generator=g)
    yield (torch.cat([boxes, long_boxes]), torch.cat([scores, torch.rand(4200, generator=g)]),
           torch.cat([idxs, torch.full((4200,), -1)]))
    boxes, scores = clustered_boxes(500, generator=g), torch.rand(500, generator=g)
    boxes[::7, 0] = NAN
    boxes[::11, 3] = INF
    boxes[::13] = NAN
    scores[::5] = NAN
    yield boxes, scores, torch.randint(0, 3, (500,), generator=g)


def run_nms(backend: str, device: torch.device, g: torch.Generator) -> None:
    for boxes, scores, idxs in nms_cases(g):
        boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
        for dtype in (torch.float32, torch.float64, torch.float16):
            b, s = boxes.to(dtype), scores.to(dtype)
            ops.nms(b, s, 0.5, backend=backend)
            ops.batched_nms(b, s, idxs, 0.5, backend=backend)


def run_giou_loss(backend: str, device: torch.device, g: torch.Generator) -> None:
    for n in (0, 1, 63, 64, 65, 700):
        for dtype in (torch.float32, torch.float64):
            pred = random_boxes(n, min_size=1.0, dtype=dtype, generator=g).to(device)
            target = random_boxes(n, dtype=dtype, generator=g).to(device)
            if n > 10:
                pred[3, 1] = NAN
                target[5, 2] = INF
            for reduction in ("none", "mean", "sum"):
                p = pred.clone().requires_grad_(True)
                loss = ops.giou_loss(p, target, reduction=reduction, backend=backend)
                loss.sum().backward()


def run_per_class_topk(backend: str, device: torch.device, g: torch.Generator) -> None:
    for n, classes in ((0, 5), (1, 5), (700, 5), (3000, 80)):
        scores = torch.rand(n, classes, generator=g)
        if n > 10:
            scores[::9, 1] = NAN
        for k in (0, 10, 5000):
            ops.per_class_topk(scores.to(device), k, 0.3, backend=backend)


def run_fcos_assign(backend: str, device: torch.device, g: torch.Generator) -> None:
    points, lower, upper, radius, _, _ = fcos_points((100, 130), device=device)
    for counts in ([0, 0], [1, 5], [37, 0, 300]):
        gt, num_gt = padded_gt([random_boxes(c, scale=130.0, min_size=4.0, generator=g)
                                for c in counts])
        if gt.shape[1] > 2:
            gt[0, 1, 2] = NAN
        ops.fcos_assign(points, lower, upper, radius, gt.to(device), num_gt.to(device),
                        backend=backend)


def run_sigmoid_focal_loss(backend: str, device: torch.device, g: torch.Generator) -> None:
    """Rows that end inside a thread's 16 bytes (C = 3, 7), C = 1, logits one element off
    16-byte alignment (odd N: the scalar path), every dtype, weight or not, every
    reduction and both backward paths (the fused gradient, the backward kernel); NaN/inf
    logits and labels out of range."""
    for n, classes in ((0, 5), (1, 1), (63, 3), (64, 7), (65, 80), (3000, 20)):
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


def main() -> None:
    os.environ.setdefault("FCOS_FAST_VALIDATE", "0")  # read at each call
    device = torch.device("cuda")
    backend = os.environ.get("FCOS_FAST_BACKEND", "native")
    g = torch.Generator().manual_seed(0)
    for run in (run_nms, run_giou_loss, run_per_class_topk, run_fcos_assign,
                run_sigmoid_focal_loss):
        run(backend, device, g)
        torch.cuda.synchronize()  # an asynchronous kernel error surfaces at its op
        print(f"cuda smoke ({backend}): {run.__name__[4:]} ok", flush=True)


if __name__ == "__main__":
    main()
