"""Per-class threshold and top-k with fixed-size outputs: ``per_class_topk`` for graphs.

The output shapes follow from the input shapes alone, and no backend synchronises with
the host, so the op captures in a CUDA graph, compiles with ``fullgraph=True`` and exports
without ``capture_dynamic_output_shape_ops``.

Backends: ``reference/per_class_topk_padded.py`` (PyTorch),
``csrc/ops/cpu/per_class_topk_padded_kernel.cpp`` and
``csrc/ops/cuda/per_class_topk_padded_kernel.cu`` (native),
``kernels/per_class_topk_padded.py`` (Triton).
"""

from __future__ import annotations

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate


def per_class_topk_padded(scores: torch.Tensor, k: int, score_thresh: float, *,
                          backend: str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each class, the up-to-``k`` points scoring ``> score_thresh``, best first,
    padded to ``K = min(k, N)`` slots.

    Args:
        scores: ``[N, C]`` scores of N points for C classes (N or C may be 0).
        k: the most candidates kept per class (``k >= 0``).
        score_thresh: only scores strictly greater are candidates (NaN never is).
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).

    Returns:
        ``(top_scores [C, K], top_index [C, K] int64, counts [C] int64)``. Row ``c`` holds
        class ``c``'s ``counts[c]`` candidates first, by score descending, ties to the
        lower point index: exactly the class-``c`` entries of ``ops.per_class_topk``.
        The slots ``j >= counts[c]`` hold ``top_scores = -inf`` and ``top_index = -1``.
        ``top_scores`` is float32 (half-precision scores are computed in float32), or
        float64 for float64 scores, the dtype ``per_class_topk`` computes in: a float64
        score rounded to float32 could tie with its neighbour and change the order.

    Equivalent PyTorch::

        s, i = torch.where(scores > score_thresh, scores, -inf).t().sort(
            dim=1, descending=True, stable=True)
        s, i = s[:, :K], i[:, :K]
        found = s > score_thresh
        return s.where(found, -inf), i.where(found, -1), found.sum(1)
    """
    _validate.tensor("scores", scores, dims=2, floating=True)
    _validate.number("k", k, integer=True, minimum=0)
    _validate.number("score_thresh", score_thresh)
    dtype = _validate.compute_dtype(scores)
    implementation = _dispatch.select("per_class_topk_padded", scores.device, backend)
    return implementation(_validate.as_dtype(scores, dtype), int(k), float(score_thresh))


def per_class_topk_padded_fake(scores, k, score_thresh):
    num_points, num_classes = scores.shape
    slots = torch.sym_min(k, num_points)
    return (scores.new_empty((num_classes, slots)),
            scores.new_empty((num_classes, slots), dtype=torch.int64),
            scores.new_empty((num_classes,), dtype=torch.int64))


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::per_class_topk_padded")(per_class_topk_padded_fake)
