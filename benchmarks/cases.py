"""Input generators shared by the benchmarks and the tests: boxes, FCOS point grids."""

from __future__ import annotations

import torch


def random_boxes(n: int, *, scale: float = 100.0, min_size: float = 0.0,
                 dtype=torch.float32, device="cpu", generator=None) -> torch.Tensor:
    """``[n, 4]`` valid boxes ``(x1, y1, x2, y2)`` with corners in ``[0, scale]``-ish."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale / 2 + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def clustered_boxes(n: int, *, clusters: int = 5, scale: float = 100.0, dtype=torch.float32,
                    device="cpu", generator=None) -> torch.Tensor:
    """Boxes jittered around a few centers, so that many overlap (NMS has work to do)."""
    centers = random_boxes(clusters, scale=scale, min_size=5.0, dtype=torch.float64,
                           generator=generator)
    pick = torch.randint(0, clusters, (n,), generator=generator)
    jitter = (torch.rand(n, 4, generator=generator, dtype=torch.float64) - 0.5) * scale * 0.1
    boxes = centers[pick] + jitter
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    return boxes.to(dtype=dtype, device=device)


def fcos_points(image_size=(96, 128), strides=(8, 16, 32, 64, 128), radius_factor=1.5,
                dtype=torch.float32, device="cpu"):
    """FCOS points ``(x, y)`` of every level with their scale ranges and radii.

    Returns ``points [P, 2], lower [P], upper [P], radius [P], strides [P], counts``,
    laid out as torchvision's FCOS does: level by level, row-major, point at the cell
    center; lower = 4·stride (0 on the first level), upper = 8·stride (inf on the last).
    """
    height, width = image_size
    points, lower, upper, radius, point_strides, counts = [], [], [], [], [], []
    for level, stride in enumerate(strides):
        ys = torch.arange((height + stride - 1) // stride, dtype=torch.float64) * stride
        xs = torch.arange((width + stride - 1) // stride, dtype=torch.float64) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        level_points = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1) + stride / 2
        n = level_points.shape[0]
        points.append(level_points)
        lower.append(torch.full((n,), 0.0 if level == 0 else 4.0 * stride, dtype=torch.float64))
        upper.append(torch.full((n,), float("inf") if level == len(strides) - 1
                                else 8.0 * stride, dtype=torch.float64))
        radius.append(torch.full((n,), radius_factor * stride, dtype=torch.float64))
        point_strides.append(torch.full((n,), float(stride), dtype=torch.float64))
        counts.append(n)
    convert = lambda t: torch.cat(t).to(dtype=dtype, device=device)  # noqa: E731
    return (convert(points), convert(lower), convert(upper), convert(radius),
            convert(point_strides), counts)


def padded_gt(boxes_per_image: list[torch.Tensor], slots: int | None = None,
              scale: float = 128.0):
    """Pad a list of ``[G_i, 4]`` boxes into ``gt_boxes [B, G, 4]`` and ``num_gt [B]``."""
    slots = max([b.shape[0] for b in boxes_per_image] + [0]) if slots is None else slots
    ref = boxes_per_image[0]
    # Padding rows hold real-looking boxes (small ones, which win the least-area rule),
    # so a kernel that reads past num_gt[b] gives a visibly wrong answer.
    padding = torch.Generator().manual_seed(1234)
    gt = torch.stack([random_boxes(slots, scale=scale, min_size=2.0, generator=padding) / 4
                      for _ in boxes_per_image]).to(dtype=ref.dtype, device=ref.device)
    for i, b in enumerate(boxes_per_image):
        gt[i, : b.shape[0]] = b
    num_gt = torch.tensor([b.shape[0] for b in boxes_per_image], dtype=torch.int64,
                          device=ref.device)
    return gt, num_gt


def postprocess_candidates(*, batch: int = 16, classes: int = 80, per_class: int = 1000,
                           tied: bool = False, dtype=torch.float32, device="cpu",
                           generator=None):
    """The ``batched_nms`` input of FCOS post-processing for a whole batch.

    Every (image, class) is one category, ``image * classes + class``, holding up to
    ``per_class`` candidates (uniformly many, a few categories full and a few empty),
    ordered by category then decreasing score as ``ops.per_class_topk`` returns them.
    Each category's boxes cluster on a few objects, so NMS has work to do. Scores are
    distinct unless ``tied`` (then they take 20 levels), since torchvision orders equal
    scores by an unstable sort.

    Returns ``boxes [M, 4] (x1, y1, x2, y2), scores [M], idxs [M] int64``.
    """
    categories = batch * classes
    counts = torch.randint(0, per_class + 1, (categories,), generator=generator)
    counts[:: max(categories // 7, 1)] = per_class
    counts[3::max(categories // 5, 1)] = 0
    boxes = torch.cat([clustered_boxes(int(c), clusters=max(int(c) // 40, 1), scale=800.0,
                                       dtype=torch.float64, generator=generator)
                       for c in counts])
    total = boxes.shape[0]
    idxs = torch.repeat_interleave(torch.arange(categories), counts)
    if tied:
        scores = torch.randint(1, 21, (total,), generator=generator).double() / 20
    else:
        scores = (torch.randperm(total, generator=generator).double() + 1) / (total + 1)
    # Category, then score descending (stable, so ties keep the lower index first).
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(idxs[by_score], stable=True)]
    convert = lambda t: t[order].to(dtype=dtype, device=device)  # noqa: E731
    return convert(boxes), convert(scores), idxs[order].to(device)
