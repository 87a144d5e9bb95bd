"""Class-aware greedy NMS over a fixed-size candidate set: ``batched_nms`` for graphs.

The candidates come as ``S`` segments of ``L`` slots (e.g. the ``[C, K]`` rows of
``per_class_topk_padded`` for every image, or one row per image), of which the first
``counts[s]`` are used; the result is a keep mask of the same ``[S, L]`` shape. No
backend synchronises with the host (the value checks aside, see ``check_values``), so the
op captures in a CUDA graph, compiles with ``fullgraph=True`` and exports.

Backends: ``reference/batched_nms_padded.py`` (PyTorch),
``csrc/ops/cpu/batched_nms_padded_kernel.cpp`` and
``csrc/ops/cuda/batched_nms_padded_kernel.cu`` (native), ``kernels/batched_nms_padded.py``
(Triton).
"""

from __future__ import annotations

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate
from fcos_fast.ops._validate import InputError


def _check_inputs(boxes, scores, counts, iou_threshold, idxs, check_values) -> torch.device:
    _validate.tensor("boxes", boxes, floating=True)
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise InputError(f"boxes must have shape [S, L, 4] (S segments of L boxes), "
                         f"got shape {list(boxes.shape)}")
    _validate.tensor("scores", scores, floating=True)
    if scores.shape != boxes.shape[:2]:
        raise InputError(f"scores must have shape [S, L] = {list(boxes.shape[:2])} "
                         f"(boxes.shape[:2]), got shape {list(scores.shape)}")
    _validate.tensor("counts", counts, dims=1, integer=True)
    if counts.shape[0] != boxes.shape[0]:
        raise InputError(f"counts must have shape [S] = [{boxes.shape[0]}] (one count per "
                         f"segment of boxes), got shape {list(counts.shape)}")
    tensors = {"boxes": boxes, "scores": scores, "counts": counts}
    if idxs is not None:
        _validate.tensor("idxs", idxs, integer=True)
        if idxs.shape != scores.shape:
            raise InputError(f"idxs must have shape [S, L] = {list(scores.shape)} like "
                             f"scores, got shape {list(idxs.shape)}")
        tensors["idxs"] = idxs
    _validate.number("iou_threshold", iou_threshold)
    device = _validate.same_device(**tensors)
    if check_values and _validate.has_values(counts):
        length = boxes.shape[1]
        if bool(((counts < 0) | (counts > length)).any()):
            raise InputError(f"counts must be in [0, L] = [0, {length}], got values from "
                             f"{int(counts.min())} to {int(counts.max())}")
        # Only the used slots are looked at: padding may hold anything.
        used = torch.arange(length, device=device) < counts[:, None]
        _validate.finite("boxes", torch.where(used[..., None], boxes, 0))
        _validate.not_nan("scores", torch.where(used, scores, 0))
    return device


def batched_nms_padded(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                       iou_threshold: float, idxs: torch.Tensor | None = None, *,
                       backend: str | None = None, check_values: bool = True
                       ) -> torch.Tensor:
    """NMS within each segment, and within it each category: a keep mask.

    Args:
        boxes: ``[S, L, 4]`` boxes ``(x1, y1, x2, y2)`` of S segments of L slots, any float
            dtype (half precision is computed in float32). S or L may be 0.
        scores: ``[S, L]`` scores. The slots need not be sorted.
        counts: ``[S]`` integer number of candidates of each segment, in its first slots;
            the other slots are never kept and never suppress (they may hold anything).
        iou_threshold: a box overlapping a kept, higher-ranked box of its segment and
            category with IoU ``> iou_threshold`` is dropped.
        idxs: ``[S, L]`` integer category of each slot, or ``None``: each segment is one
            category.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the checks on values (counts in ``[0, L]``, finite
            boxes and no NaN score in the used slots), a reduction and, on GPU, a device
            sync, as ``FCOS_FAST_VALIDATE=0`` does; they are skipped under
            ``torch.compile`` too. Without them counts are clamped to ``[0, L]`` and NaN
            or inf values give unspecified results, never a crash or a write out of bounds.

    Returns:
        ``keep [S, L]`` bool: ``keep[s, j]`` is True iff slot ``j < counts[s]`` is kept by
        ``torchvision.ops.batched_nms(boxes[s, :n], scores[s, :n], idxs[s, :n],
        iou_threshold)`` with ``n = counts[s]`` (greedy by decreasing score, equal scores
        the lower slot first, IoU as ``ops.nms`` computes it). Kept slots in score order:
        ``scores.where(keep, -inf).sort(dim=1, descending=True, stable=True)``.

    Raises:
        InputError: (a ``ValueError`` and a ``RuntimeError``) for a wrong shape, dtype or
            device mix, or bad values (see ``check_values``).

    Memory: at most ``L * ceil(L / 64)`` 64-bit mask words per segment on the GPU
    backends, ``O(S * L)`` on the CPU and reference, never ``(S * L)^2``.

    Equivalent PyTorch::

        keep = torch.zeros(S, L, dtype=torch.bool)
        for s in range(S):
            n = counts[s]
            kept = torchvision.ops.batched_nms(boxes[s, :n], scores[s, :n],
                                               idxs[s, :n], iou_threshold)
            keep[s, kept] = True
    """
    device = _check_inputs(boxes, scores, counts, iou_threshold, idxs, check_values)
    dtype = _validate.compute_dtype(boxes, scores)
    implementation = _dispatch.select("batched_nms_padded", device, backend)
    return implementation(_validate.as_dtype(boxes, dtype), _validate.as_dtype(scores, dtype),
                          _validate.as_dtype(counts, torch.int64), float(iou_threshold),
                          None if idxs is None else _validate.as_dtype(idxs, torch.int64))


def batched_nms_padded_fake(boxes, scores, counts, iou_threshold, idxs=None):
    return scores.new_empty(scores.shape, dtype=torch.bool)


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::batched_nms_padded")(batched_nms_padded_fake)
