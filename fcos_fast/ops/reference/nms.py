"""Reference greedy NMS: sort once, one IoU row per kept box."""

from __future__ import annotations

import torch


def _iou_with(boxes: torch.Tensor, areas: torch.Tensor, i: int) -> torch.Tensor:
    """IoU of box ``i`` with every box, in torchvision's CPU-kernel arithmetic.

    ``boxes [..., N, 4]`` and ``areas [..., N]``: leading dimensions are independent
    sets of boxes (``reference/batched_nms_padded.py`` sweeps ``[S, L, 4]`` segments).
    """
    box = boxes[..., i:i + 1, :]
    x1 = torch.maximum(box[..., 0], boxes[..., 0])
    y1 = torch.maximum(box[..., 1], boxes[..., 1])
    x2 = torch.minimum(box[..., 2], boxes[..., 2])
    y2 = torch.minimum(box[..., 3], boxes[..., 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    return inter / (areas[..., i:i + 1] + areas - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score (stable)."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        # A NaN IoU (two empty boxes) compares False and suppresses nothing, as in
        # torchvision.
        suppressed |= _iou_with(boxes, areas, i) > iou_threshold
    keep = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS run independently per category, merged by decreasing score (stable)."""
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for category in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == category).flatten()
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.nonzero(keep_mask).flatten()
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]
