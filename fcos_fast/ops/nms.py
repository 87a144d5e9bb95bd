"""Class-agnostic and class-aware greedy non-maximum suppression.

Same indices, in the same order, as ``torchvision.ops.nms`` / ``batched_nms``.
The output size depends on the data: under ``torch.compile`` set
``torch._dynamo.config.capture_dynamic_output_shape_ops = True`` to keep it in the graph.

Backends: ``reference/nms.py`` (PyTorch), ``csrc/ops/cpu/nms_kernel.cpp`` and
``csrc/ops/cuda/nms_kernel.cu`` (native), ``kernels/nms.py`` (Triton).
"""

from __future__ import annotations

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate


def _check_boxes_scores(boxes, scores, iou_threshold, check_values, **more) -> torch.device:
    """Shared checks of (batched_)nms; ``more`` are extra per-box tensors (idxs)."""
    _validate.tensor("boxes", boxes, dims=2, last=4, floating=True)
    _validate.tensor("scores", scores, dims=1, floating=True)
    for name, value in more.items():
        _validate.tensor(name, value, dims=1, integer=True)
    _validate.same_length(boxes=boxes, scores=scores, **more)
    _validate.number("iou_threshold", iou_threshold)
    device = _validate.same_device(boxes=boxes, scores=scores, **more)
    if check_values:
        _validate.finite("boxes", boxes)
        _validate.not_nan("scores", scores)
    return device


def _no_boxes(boxes, scores, idxs, iou_threshold) -> bool:
    """Whether this is torchvision's "no boxes" call of ``batched_nms``.

    torchvision returns an empty result for any ``boxes`` without elements, including a
    1-D ``torch.empty(0)`` (what ``torch.cat`` of no per-image boxes gives) and with
    ``scores``/``idxs``/``iou_threshold`` left ``None``; its own test calls
    ``batched_nms(torch.empty(0), None, None, None)``. Arguments that are given must
    still be empty 1-D tensors and a number, so a real mistake is still reported.

    A regular call (2-D boxes, every argument given) is never looked at here: the kernels
    handle ``N = 0``, and under ``torch.compile`` ``N`` may be data-dependent.
    """
    if not isinstance(boxes, torch.Tensor):
        return False
    if boxes.dim() == 2 and not any(v is None for v in (scores, idxs, iou_threshold)):
        return False
    if boxes.numel() != 0 or boxes.dim() > 2 or (boxes.dim() == 2 and boxes.shape[1] != 4):
        return False
    for name, value in (("scores", scores), ("idxs", idxs)):
        if value is not None:
            _validate.tensor(name, value, dims=1)
            _validate.same_length(boxes=boxes, **{name: value})
            _validate.same_device(boxes=boxes, **{name: value})
    if iou_threshold is not None:
        _validate.number("iou_threshold", iou_threshold)
    return True


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, *,
        backend: str | None = None, check_values: bool = True) -> torch.Tensor:
    """Greedy NMS: drop every box whose IoU with a higher-scoring kept box is > threshold.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, any float dtype (half precision is
            computed in float32).
        scores: ``[N]`` scores.
        iou_threshold: boxes overlapping a kept box with IoU ``> iou_threshold`` are dropped.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the check that boxes are finite and scores not NaN
            (a reduction and, on GPU, a device sync), as ``FCOS_FAST_VALIDATE=0`` does.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score; equal scores keep
        the lower index first.

    Raises:
        InputError: (a ``ValueError`` and a ``RuntimeError``, as torchvision's checks
            raise) for a wrong shape, dtype or device mix, or non-finite values. A 1-D
            ``boxes`` is an error, even an empty one, as in torchvision.

    Equivalent PyTorch::

        order = scores.argsort(descending=True, stable=True)
        iou = torchvision.ops.box_iou(boxes[order], boxes[order])
        keep = []
        for i in range(N):
            if all(iou[i, j] <= iou_threshold for j in keep): keep.append(i)
        return order[keep]
    """
    device = _check_boxes_scores(boxes, scores, iou_threshold, check_values)
    dtype = _validate.compute_dtype(boxes, scores)
    implementation = _dispatch.select("nms", device, backend)
    return implementation(_validate.as_dtype(boxes, dtype), _validate.as_dtype(scores, dtype),
                          float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float, *, backend: str | None = None,
                check_values: bool = True) -> torch.Tensor:
    """NMS within each category: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``[N]`` scores.
        idxs: ``[N]`` integer category of each box.
        iou_threshold: IoU above which a lower-scoring box of the same category is dropped.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the checks on values, as in ``nms``.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score (ties: lower index
        first) — the result of ``torchvision.ops.batched_nms``. Boxes without elements,
        ``[0, 4]`` or a 1-D ``torch.empty(0)``, give an empty result, as in torchvision
        (which then accepts ``None`` for the other arguments).

    Raises:
        InputError: as ``nms``.

    Equivalent PyTorch::

        keep = torch.cat([where(idxs == c)[0][nms(boxes[idxs == c], scores[idxs == c], t)]
                          for c in idxs.unique()])
        return keep[scores[keep].argsort(descending=True, stable=True)]   # ties by index
    """
    if _no_boxes(boxes, scores, idxs, iou_threshold):
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    device = _check_boxes_scores(boxes, scores, iou_threshold, check_values, idxs=idxs)
    dtype = _validate.compute_dtype(boxes, scores)
    implementation = _dispatch.select("batched_nms", device, backend)
    return implementation(_validate.as_dtype(boxes, dtype), _validate.as_dtype(scores, dtype),
                          _validate.as_dtype(idxs, torch.int64), float(iou_threshold))


def nms_fake(boxes, scores, iou_threshold):
    """Output metadata of ``nms``: a data-dependent number of int64 indices."""
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


def batched_nms_fake(boxes, scores, idxs, iou_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::nms")(nms_fake)
    torch.library.register_fake("fcos_fast::batched_nms")(batched_nms_fake)
