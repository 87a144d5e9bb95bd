"""Generalized IoU loss, forward and backward fused.

Same values and gradients as ``torchvision.ops.generalized_box_iou_loss``. Backends:
``reference/giou_loss.py`` (PyTorch autograd), ``csrc/ops/cpu/giou_loss_kernel.cpp`` and
``csrc/ops/cuda/giou_loss_kernel.cu`` (native), ``kernels/giou_loss.py`` (Triton). The
native and Triton forward ops save only their inputs; the backward op recomputes.
"""

from __future__ import annotations

from typing import Callable

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate

REDUCTIONS = ("none", "mean", "sum")


def giou_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "none",
              eps: float = 1e-7, backend: str | None = None,
              check_values: bool = True) -> torch.Tensor:
    """``1 - GIoU(pred, target)`` per pair of boxes, optionally reduced.

    Args:
        pred: ``[N, 4]`` (or ``[..., 4]``) predicted boxes ``(x1, y1, x2, y2)``.
        target: ``[N, 4]`` target boxes, same shape as ``pred``.
        reduction: ``"none"`` (``[N]`` losses), ``"mean"`` or ``"sum"`` (a scalar; the
            mean of no boxes is 0, with a gradient, as in torchvision).
        eps: added to the union and enclosing areas to avoid division by zero.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the check that the boxes are finite (a reduction
            and, on GPU, a device sync), as ``FCOS_FAST_VALIDATE=0`` does for every call:
            for callers whose boxes are their own predictions, such as a training loss,
            where a NaN must give a NaN loss (which the training loop skips), not an error.

    Returns:
        The loss in the inputs' promoted dtype, at least float32: float16 and bfloat16
        boxes give a float32 loss, as ``torchvision.ops.generalized_box_iou_loss`` does
        (the gradient with respect to a half-precision input is in that input's dtype).

    Raises:
        InputError: (a ``ValueError`` and a ``RuntimeError``) for a wrong shape, dtype,
            device mix, reduction or ``eps``, or non-finite boxes.

    Equivalent PyTorch::

        inter = (min(x2, x2g) - max(x1, x1g)) * (min(y2, y2g) - max(y1, y1g)) if both > 0 else 0
        union = area(pred) + area(target) - inter
        enclose = (max(x2, x2g) - min(x1, x1g)) * (max(y2, y2g) - min(y1, y1g))
        loss = 1 - (inter / (union + eps) - (enclose - union) / (enclose + eps))
    """
    _validate.tensor("pred", pred, last=4, floating=True)
    _validate.tensor("target", target, last=4, floating=True)
    if pred.shape != target.shape:
        raise _validate.InputError(
            f"pred and target must have the same shape, got {list(pred.shape)} and "
            f"{list(target.shape)}"
        )
    if reduction not in REDUCTIONS:
        # "Invalid value for ... reduction": the words of torchvision's error.
        raise _validate.InputError(
            f"Invalid value for reduction: {reduction!r}; choose one of {REDUCTIONS}")
    _validate.number("eps", eps, minimum=0.0)
    device = _validate.same_device(pred=pred, target=target)
    if check_values:
        _validate.finite("pred", pred)
        _validate.finite("target", target)

    # The loss stays in the computing dtype: rounding it (or, worse, a reduced sum) back
    # to half precision would lose what the float32 computation gained.
    dtype = _validate.compute_dtype(pred, target)
    batch_shape = pred.shape[:-1]
    implementation = _dispatch.select("giou_loss", device, backend)
    if pred.dim() != 2:  # a reshape of [N, 4] would still dispatch an operator
        pred, target = pred.reshape(-1, 4), target.reshape(-1, 4)
    loss = implementation(_validate.as_dtype(pred, dtype), _validate.as_dtype(target, dtype),
                          reduction, float(eps))
    if reduction == "none" and len(batch_shape) != 1:
        loss = loss.reshape(batch_shape)
    return loss


def giou_loss_fake(pred, target, reduction, eps):
    shape = pred.shape[:1] if reduction == "none" else ()
    return pred.new_empty(shape)


def giou_loss_backward_fake(grad_output, pred, target, reduction, eps):
    return torch.empty_like(pred), torch.empty_like(target)


def register_giou_autograd(forward_op: str, backward_op: Callable) -> None:
    """Give the fused forward op ``forward_op`` its fused backward ``backward_op``.

    Only the inputs are saved: the backward kernel recomputes the intersection, union
    and enclosing box, which is cheaper than storing them.
    """

    def setup_context(ctx, inputs, output):
        pred, target, reduction, eps = inputs
        ctx.save_for_backward(pred, target)
        ctx.reduction = reduction
        ctx.eps = eps

    def backward(ctx, grad_output):
        pred, target = ctx.saved_tensors
        grad_pred, grad_target = backward_op(grad_output.contiguous(), pred, target,
                                             ctx.reduction, ctx.eps)
        return grad_pred, grad_target, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::giou_loss")(giou_loss_fake)
    torch.library.register_fake("fcos_fast::giou_loss_backward")(giou_loss_backward_fake)
    register_giou_autograd("fcos_fast::giou_loss",
                           lambda *args: torch.ops.fcos_fast.giou_loss_backward(*args))
