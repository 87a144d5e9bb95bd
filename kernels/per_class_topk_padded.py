"""Fixed-size per-class top-k in Triton: ``fcos_fast::per_class_topk_padded_triton``.

The kernels of ``kernels/per_class_topk.py`` already produce the fixed-size table
``[C, min(k, N)]`` (each row best first, index ``-1`` past the last candidate) before
``per_class_topk`` compacts it; this op keeps the table, with ``-inf`` in the empty slots
and the count of each row. Same launches, same launch configurations (so the ahead-of-time
compile test covers them), and no host-device synchronisation.
"""

from __future__ import annotations

import torch

from fcos_fast.kernels._common import register
from fcos_fast.kernels.per_class_topk import per_class_topk_table
from fcos_fast.ops.per_class_topk_padded import per_class_topk_padded_fake

__all__ = ["per_class_topk_padded"]


def per_class_topk_padded_launch(scores: torch.Tensor, k: int, score_thresh: float
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The launcher of ``fcos_fast::per_class_topk_padded_triton`` (traceable)."""
    num_points, num_classes = scores.shape
    slots = min(k, num_points)
    if slots == 0 or num_classes == 0:
        return (scores.new_empty((num_classes, slots)),
                torch.empty((num_classes, slots), dtype=torch.int64, device=scores.device),
                torch.zeros((num_classes,), dtype=torch.int64, device=scores.device))
    top_scores, top_index = per_class_topk_table(scores, k, score_thresh)
    found = top_index >= 0  # a prefix of each row
    return (torch.where(found, top_scores, torch.full_like(top_scores, float("-inf"))),
            top_index, found.sum(dim=1))


@torch.library.triton_op("fcos_fast::per_class_topk_padded_triton", mutates_args=())
def _per_class_topk_padded_triton(scores: torch.Tensor, k: int, score_thresh: float
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return per_class_topk_padded_launch(scores, k, score_thresh)


register(_per_class_topk_padded_triton, per_class_topk_padded_fake)


def per_class_topk_padded(scores: torch.Tensor, k: int, score_thresh: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``triton`` backend of ``fcos_fast.ops.per_class_topk_padded`` (validated inputs)."""
    return torch.ops.fcos_fast.per_class_topk_padded_triton(scores, k, score_thresh)
