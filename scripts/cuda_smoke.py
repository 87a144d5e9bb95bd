"""Every op once on small CUDA inputs, edge cases included: the program that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck)."""

import os

import torch

from benchmarks.cases import clustered_boxes, fcos_points, padded_gt, random_boxes
from fcos_fast import ops


def main() -> None:
    device = torch.device("cuda")
    backend = os.environ.get("FCOS_FAST_BACKEND", "native")
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 63, 64, 65, 700):
        boxes = clustered_boxes(n, generator=g).to(device)
        scores = torch.rand(n, generator=g).to(device)
        idxs = torch.randint(0, 7, (n,), generator=g).to(device)
        ops.nms(boxes, scores, 0.5, backend=backend)
        ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend)
        pred = random_boxes(n, min_size=1.0, generator=g).to(device).requires_grad_(True)
        for reduction in ("none", "mean", "sum"):
            loss = ops.giou_loss(pred, random_boxes(n, generator=g).to(device),
                                 reduction=reduction, backend=backend)
            loss.sum().backward()
        ops.per_class_topk(torch.rand(n, 5, generator=g).to(device), 10, 0.3, backend=backend)
    points, lower, upper, radius, _, _ = fcos_points((100, 130), device=device)
    for counts in ([0, 0], [1, 5], [37, 0, 300]):
        gt, num_gt = padded_gt([random_boxes(c, scale=130.0, min_size=4.0, generator=g)
                                for c in counts])
        ops.fcos_assign(points, lower, upper, radius, gt.to(device), num_gt.to(device),
                        backend=backend)
    torch.cuda.synchronize()
    print(f"cuda smoke ({backend}): ok")


if __name__ == "__main__":
    main()
