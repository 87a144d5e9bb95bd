"""Reference fixed-size per-class top-k: per_class_topk's sort, kept as padded tables."""

from __future__ import annotations

import torch


def per_class_topk_padded(scores: torch.Tensor, k: int, score_thresh: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top_scores [C, K], top_index [C, K], counts [C])``, ``K = min(k, N)``."""
    num_points = scores.shape[0]
    slots = min(k, num_points)
    # As reference/per_class_topk.py: non-candidates (NaN included) become -inf, so that
    # they take a slot only when a class has fewer than K candidates.
    candidates = torch.where(scores > score_thresh, scores,
                             torch.full_like(scores, float("-inf")))
    sorted_scores, point_idx = torch.sort(candidates.t(), dim=1, descending=True, stable=True)
    top, point_idx = sorted_scores[:, :slots], point_idx[:, :slots]
    found = top > score_thresh  # a prefix of each row: the rows are sorted
    return (torch.where(found, top, torch.full_like(top, float("-inf"))),
            torch.where(found, point_idx, torch.full_like(point_idx, -1)),
            found.sum(dim=1))
