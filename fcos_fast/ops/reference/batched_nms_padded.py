"""Reference fixed-size class-aware NMS: every segment at once, one greedy step per slot."""

from __future__ import annotations

import torch

from fcos_fast.ops.reference.nms import _iou_with


def batched_nms_padded(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                       iou_threshold: float, idxs: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """``keep [S, L]``: whether each slot is kept by NMS within its segment.

    Static shapes throughout: the segments are swept side by side, one sorted position
    per step, and each step suppresses with one IoU row per segment (memory O(S * L)).
    """
    num_segments, length = scores.shape
    slot = torch.arange(length, device=scores.device)
    valid = slot < counts.clamp(0, length)[:, None]  # [S, L]: the first counts[s] slots
    # Unused slots sort after every candidate: as -inf they tie only with a candidate of
    # score -inf, which the stable sort keeps first (its slot is lower). NaN sorts first,
    # as in torch.sort.
    order = torch.argsort(torch.where(valid, scores, torch.full_like(scores, float("-inf"))),
                          dim=1, descending=True, stable=True)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    valid = valid.gather(1, order)
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    category = idxs.gather(1, order) if idxs is not None else None

    removed = torch.zeros_like(valid)
    kept = torch.zeros_like(valid)  # by sorted position
    for i in range(length):
        kept_now = valid[:, i] & ~removed[:, i]  # [S]
        kept[:, i] = kept_now
        # Only a kept box suppresses; a NaN IoU compares False and suppresses nothing.
        suppress = (_iou_with(boxes, areas, i) > iou_threshold) & kept_now[:, None]
        if category is not None:
            suppress &= category == category[:, i:i + 1]
        removed = removed | suppress
    return torch.zeros_like(kept).scatter(1, order, kept)
