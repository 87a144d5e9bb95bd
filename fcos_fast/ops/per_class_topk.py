"""Per-class score threshold and top-k: the candidate selection of FCOS inference.

The output size depends on the data: under ``torch.compile`` set
``torch._dynamo.config.capture_dynamic_output_shape_ops = True`` to keep it in the graph.

Backends: ``reference/per_class_topk.py`` (PyTorch, one sort for all classes),
``csrc/ops/cpu/per_class_topk_kernel.cpp`` and ``csrc/ops/cuda/per_class_topk_kernel.cu``
(native), ``kernels/per_class_topk.py`` (Triton).
"""

from __future__ import annotations

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate


def per_class_topk(scores: torch.Tensor, k: int, score_thresh: float, *,
                   backend: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each class, the up-to-``k`` points scoring ``> score_thresh``, best first.

    Choosing candidates per class (rather than over all classes at once) keeps rare
    classes from being crowded out by a frequent one.

    Args:
        scores: ``[N, C]`` scores of N points for C classes.
        k: the most candidates kept per class (``k >= 0``).
        score_thresh: only scores strictly greater are candidates (NaN never is).
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).

    Returns:
        ``(scores[M], point_idx[M], class_idx[M])``, ordered by class, then score
        descending, then point index; ``scores`` in the input dtype, indices int64.

    Equivalent PyTorch::

        for c in range(C):
            s, i = scores[:, c].sort(descending=True, stable=True)
            keep = s[:k] > score_thresh
            emit s[:k][keep], i[:k][keep], c
    """
    _validate.tensor("scores", scores, dims=2, floating=True)
    _validate.number("k", k, integer=True, minimum=0)
    _validate.number("score_thresh", score_thresh)
    dtype = _validate.compute_dtype(scores)
    implementation = _dispatch.select("per_class_topk", scores.device, backend)
    top_scores, point_idx, class_idx = implementation(_validate.as_dtype(scores, dtype),
                                                      int(k), float(score_thresh))
    if top_scores.dtype != scores.dtype:
        top_scores = top_scores.to(scores.dtype)
    return top_scores, point_idx, class_idx


def per_class_topk_fake(scores, k, score_thresh):
    count = torch.library.get_ctx().new_dynamic_size()
    return (scores.new_empty((count,)), scores.new_empty((count,), dtype=torch.int64),
            scores.new_empty((count,), dtype=torch.int64))


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::per_class_topk")(per_class_topk_fake)
