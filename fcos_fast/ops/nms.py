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


def _check_boxes_scores(boxes, scores, iou_threshold, **more) -> torch.device:
    """Shared checks of (batched_)nms; ``more`` are extra per-box tensors (idxs)."""
    _validate.tensor("boxes", boxes, dims=2, last=4, floating=True)
    _validate.tensor("scores", scores, dims=1, floating=True)
    for name, value in more.items():
        _validate.tensor(name, value, dims=1, integer=True)
    _validate.same_length(boxes=boxes, scores=scores, **more)
    _validate.number("iou_threshold", iou_threshold)
    device = _validate.same_device(boxes=boxes, scores=scores, **more)
    _validate.finite("boxes", boxes)
    _validate.not_nan("scores", scores)
    return device


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, *,
        backend: str | None = None) -> torch.Tensor:
    """Greedy NMS: drop every box whose IoU with a higher-scoring kept box is > threshold.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, any float dtype (half precision is
            computed in float32).
        scores: ``[N]`` scores.
        iou_threshold: boxes overlapping a kept box with IoU ``> iou_threshold`` are dropped.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score; equal scores keep
        the lower index first.

    Equivalent PyTorch::

        order = scores.argsort(descending=True, stable=True)
        iou = torchvision.ops.box_iou(boxes[order], boxes[order])
        keep = []
        for i in range(N):
            if all(iou[i, j] <= iou_threshold for j in keep): keep.append(i)
        return order[keep]
    """
    device = _check_boxes_scores(boxes, scores, iou_threshold)
    dtype = _validate.compute_dtype(boxes, scores)
    implementation = _dispatch.select("nms", device, backend)
    return implementation(boxes.to(dtype).contiguous(), scores.to(dtype).contiguous(),
                          float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float, *, backend: str | None = None) -> torch.Tensor:
    """NMS within each category: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``[N]`` scores.
        idxs: ``[N]`` integer category of each box.
        iou_threshold: IoU above which a lower-scoring box of the same category is dropped.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score (ties: lower index
        first) — the result of ``torchvision.ops.batched_nms``.

    Equivalent PyTorch::

        keep = torch.cat([where(idxs == c)[0][nms(boxes[idxs == c], scores[idxs == c], t)]
                          for c in idxs.unique()])
        return keep[scores[keep].argsort(descending=True, stable=True)]   # ties by index
    """
    device = _check_boxes_scores(boxes, scores, iou_threshold, idxs=idxs)
    dtype = _validate.compute_dtype(boxes, scores)
    implementation = _dispatch.select("batched_nms", device, backend)
    return implementation(boxes.to(dtype).contiguous(), scores.to(dtype).contiguous(),
                          idxs.to(torch.int64).contiguous(), float(iou_threshold))


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
