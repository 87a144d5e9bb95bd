"""Reference GIoU loss: torchvision's formula, differentiated by autograd."""

from __future__ import annotations

import torch


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str,
              eps: float) -> torch.Tensor:
    """``1 - GIoU`` for ``[N, 4]`` box pairs, reduced by ``"none"``, ``"mean"`` or ``"sum"``."""
    x1, y1, x2, y2 = pred.unbind(dim=-1)
    x1g, y1g, x2g, y2g = target.unbind(dim=-1)

    inter_w = torch.minimum(x2, x2g) - torch.maximum(x1, x1g)
    inter_h = torch.minimum(y2, y2g) - torch.maximum(y1, y1g)
    overlaps = (inter_w > 0) & (inter_h > 0)
    # where(), not clamp(): no gradient flows through a pair that does not overlap,
    # exactly as torchvision's masked assignment.
    inter = torch.where(overlaps, inter_w * inter_h, torch.zeros_like(inter_w))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)

    enclose = (torch.maximum(x2, x2g) - torch.minimum(x1, x1g)) * (
        torch.maximum(y2, y2g) - torch.minimum(y1, y1g))
    loss = 1 - (iou - (enclose - union) / (enclose + eps))

    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss
