"""Reference per-class top-k: one stable sort of every class column at once."""

from __future__ import annotations

import torch


def per_class_topk(scores: torch.Tensor, k: int, score_thresh: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``k`` points per class with score ``> score_thresh``; class-major order."""
    num_points, num_classes = scores.shape
    k = min(k, num_points)
    # Non-candidates (including NaN, which sorts above everything) become -inf so they
    # cannot take a top-k slot; they are then dropped by the mask below.
    candidates = torch.where(scores > score_thresh, scores,
                             torch.full_like(scores, float("-inf")))
    sorted_scores, point_idx = torch.sort(candidates.t(), dim=1, descending=True, stable=True)
    sorted_scores, point_idx = sorted_scores[:, :k], point_idx[:, :k]  # [C, k]
    keep = sorted_scores > score_thresh
    class_idx = torch.arange(num_classes, device=scores.device)[:, None].expand(-1, k)
    return sorted_scores[keep], point_idx[keep], class_idx[keep]
