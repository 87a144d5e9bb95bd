"""Sigmoid focal loss against class indices, forward and backward fused.

The values and gradients of ``torchvision.ops.sigmoid_focal_loss`` on the one-hot targets
of ``labels``, without the one-hot tensor or any other ``[N, C]`` temporary but the
gradient. Backends: ``reference/sigmoid_focal_loss.py`` (PyTorch, the spec),
``csrc/ops/cpu/sigmoid_focal_loss_kernel.cpp`` (vectorised per CPU capability, see
``csrc/ops/cpu/vectorized/``) and ``csrc/ops/cuda/sigmoid_focal_loss_kernel.cu`` (native),
``kernels/sigmoid_focal_loss.py`` (Triton). The per-element math of the native kernels
is ``csrc/ops/focal_math.h``.

Memory. With a reduction and logits that need a gradient, the forward pass computes the
gradient of the reduced loss as well (as Liger-Kernel's fused cross-entropy does: the
logits are read once in all) and autograd's backward scales that saved gradient in place
by the upstream gradient: at the peak, one ``[N, C]`` tensor beside the logits, the
gradient itself. When autograd keeps the graph for another backward (``retain_graph=True``)
the saved gradient is left as it is and backward returns a scaled copy instead, so any
number of backwards are right. With ``reduction="none"`` (or no gradient needed) the
forward saves its inputs and a backward kernel recomputes from them. Double backward
(``create_graph=True``) raises: neither gradient carries a graph of its own.
"""

from __future__ import annotations

from typing import Callable

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate

REDUCTIONS = ("none", "mean", "sum")


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, *,
                       weight: torch.Tensor | None = None, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none",
                       backend: str | None = None, check_values: bool = True) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., 2017) of ``logits`` against class indices.

    Args:
        logits: ``[N, C]`` (or ``[..., C]``) classification logits, float16, bfloat16,
            float32 or float64. Half-precision logits are computed in float32 and never
            copied to float32 as a whole.
        labels: ``[N]`` (or ``[...]``, the leading shape of ``logits``) integer class of
            each row, in ``[-1, C)``: the target of row ``i`` is one-hot at
            ``labels[i]``, and ``-1`` (background) makes every class of the row a negative.
        weight: optional ``[N]`` (or ``[...]``) factor of each row's losses. It gets no
            gradient (it must not require one).
        alpha: weight of the positive class, ``1 - alpha`` of the negatives, in ``[0, 1]``;
            a negative value (torchvision's ``-1``) weighs both by 1.
        gamma: focusing exponent ``>= 0`` of ``(1 - p_t)``.
        reduction: ``"none"`` (the ``[N, C]`` losses, shaped like ``logits``), ``"mean"``
            (over all ``N * C`` elements, as torchvision's ``loss.mean()``; NaN when
            there are none, as there) or ``"sum"``.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the check that ``labels`` lie in ``[-1, C)`` (a
            reduction and, on GPU, a device sync), as ``FCOS_FAST_VALIDATE=0`` does for
            every call. Unchecked, a label outside the range marks no class positive
            (memory-safe, never indexed with). Logits are never checked: a NaN or
            infinite logit is a legitimate (diverged) prediction, and gives a NaN or
            infinite loss, which a training loop can skip, not an exception.

    Returns:
        The loss in the computing dtype, at least float32 (float16/bfloat16 logits give a
        float32 loss); the gradient with respect to ``logits`` is in their dtype.

    Raises:
        InputError: (a ``ValueError`` and a ``RuntimeError``) for a wrong shape, dtype or
            device mix, reduction, ``alpha`` or ``gamma``, a ``weight`` that requires a
            gradient, or (checked) labels outside ``[-1, C)``.

    Numerics. Computed as ``alpha_t * softplus(w) * sigmoid(w) ** gamma`` with ``w = x``
    for a negative and ``-x`` for the positive, which is torchvision's
    ``alpha_t * BCE(x, t) * (1 - p_t) ** gamma`` rewritten so that nothing cancels: for
    finite logits the values and gradients are torchvision's (tested within a few ulps of
    a float64 reference, which torchvision itself meets), and where torchvision's
    ``1 - p_t`` rounds to 0 or its ``(1 - p_t) ** (gamma - 1)`` overflows (saturated
    logits, ``0 < gamma < 1``: a NaN gradient there) this gives the limit, the
    mathematically right value. Infinite logits give the limits too: ``+inf`` on the
    positive class a loss and gradient of 0 (torchvision: NaN), on a negative class a loss
    of ``inf`` and a gradient of ``1 - alpha``. NaN logits give NaN losses and gradients.

    Equivalent PyTorch::

        targets = torch.nn.functional.one_hot(labels + 1, C + 1)[..., 1:].to(logits)
        loss = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, "none")
        if weight is not None:
            loss = loss * weight[..., None]
        loss = loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss
    """
    _validate.tensor("logits", logits, floating=True)
    if logits.dim() == 0:
        raise _validate.InputError(
            "logits must have at least 1 dimension (shape [N, C]), got a scalar")
    _validate.tensor("labels", labels, integer=True)
    if labels.shape != logits.shape[:-1]:
        raise _validate.InputError(
            f"labels must have the leading shape of logits, {list(logits.shape[:-1])}, "
            f"got {list(labels.shape)}")
    if weight is not None:
        _validate.tensor("weight", weight, floating=True)
        if weight.shape != labels.shape:
            raise _validate.InputError(
                f"weight must have the shape of labels, {list(labels.shape)}, "
                f"got {list(weight.shape)}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise _validate.InputError(
                "weight must not require a gradient: sigmoid_focal_loss gives none for it "
                "(pass weight.detach())")
    if reduction not in REDUCTIONS:
        # "Invalid value for ... reduction": the words of torchvision's error.
        raise _validate.InputError(
            f"Invalid value for reduction: {reduction!r}; choose one of {REDUCTIONS}")
    _validate.number("alpha", alpha)
    if alpha > 1:
        raise _validate.InputError(
            f"alpha must be in [0, 1] (or negative for no weighting), got {alpha}")
    _validate.number("gamma", gamma, minimum=0.0)
    tensors = {"logits": logits, "labels": labels}
    if weight is not None:
        tensors["weight"] = weight
    device = _validate.same_device(**tensors)
    num_classes = logits.shape[-1]
    if check_values and _validate.has_values(labels):
        _check_labels(labels, num_classes)

    implementation = _dispatch.select("sigmoid_focal_loss", device, backend)
    shape = logits.shape
    if logits.dim() != 2:  # a reshape of [N, C] would still dispatch an operator
        logits, labels = logits.reshape(-1, num_classes), labels.reshape(-1)
        weight = None if weight is None else weight.reshape(-1)
    logits = _validate.as_dtype(logits, logits.dtype)  # contiguous, in its own dtype
    if labels.dtype != torch.int64 or not labels.is_contiguous():
        labels = labels.to(torch.int64).contiguous()
    if weight is not None:
        weight = _validate.as_dtype(weight, _validate.compute_dtype(logits))
    # The gradient in the forward pass only where autograd will ask for it: a reduced loss
    # of logits that need one (reduction="none" recomputes instead, see the module doc).
    with_grad = reduction != "none" and logits.requires_grad and torch.is_grad_enabled()
    loss = implementation(logits, labels, weight, float(alpha), float(gamma), reduction,
                          with_grad)[0]
    if reduction == "none" and len(shape) != 2:
        loss = loss.reshape(shape)
    return loss


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Labels in ``[-1, C)``: one reduction for both bounds (and on GPU one sync)."""
    low, high = (int(bound) for bound in torch.aminmax(labels))
    if low < -1 or high >= num_classes:
        raise _validate.InputError(
            f"labels must be class indices in [-1, {num_classes}) (-1 for background), got "
            f"values from {low} to {high} (set {_validate.VALIDATE_ENV_VAR}=0 or "
            "check_values=False to skip this check)")


def loss_shape(logits: torch.Tensor, reduction: str) -> tuple[int, ...]:
    return tuple(logits.shape) if reduction == "none" else ()


def sigmoid_focal_loss_fake(logits, labels, weight, alpha, gamma, reduction, with_grad):
    dtype = _validate.compute_dtype(logits)
    loss = logits.new_empty(loss_shape(logits, reduction), dtype=dtype)
    grad = torch.empty_like(logits) if with_grad else logits.new_empty((0,))
    return loss, grad


def sigmoid_focal_loss_backward_fake(grad_output, logits, labels, weight, alpha, gamma,
                                     reduction):
    return torch.empty_like(logits)


DOUBLE_BACKWARD_ERROR = ("sigmoid_focal_loss: double backward (create_graph=True) is not "
                         "implemented")


def _functionalized(tensor: torch.Tensor) -> bool:
    from torch._subclasses.functional_tensor import FunctionalTensor  # noqa: PLC0415

    return isinstance(tensor, FunctionalTensor)


def register_focal_autograd(forward_op: str, backward_op: Callable) -> None:
    """The autograd formula of the op ``forward_op``, a ``sigmoid_focal_loss`` of any
    backend returning ``(loss, grad)``.

    * ``with_grad``: ``grad`` is the gradient of the loss (upstream 1) from the forward
      pass; backward scales it in place by the upstream gradient and hands it on (or, when
      autograd keeps the graph for another backward, returns the scaled product). Nothing
      else is saved (not even the logits, which the caller may then free).
    * otherwise: the inputs are saved and ``backward_op`` recomputes from them.

    Double backward (``create_graph=True``) raises on both paths.
    """

    def setup_context(ctx, inputs, output):
        logits, labels, weight, alpha, gamma, reduction, with_grad = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # else autograd hands backward an [N, C] of zeros
        ctx.with_grad = with_grad
        if with_grad:
            # A plain attribute, not save_for_backward: backward takes the only reference,
            # so that autograd can hand the scaled tensor on as logits.grad without a copy
            # (a saved tensor stays referenced, and AccumulateGrad would clone it). It has
            # no grad_fn, so this makes no reference cycle.
            ctx.fused_grad = output[1]
        else:
            ctx.save_for_backward(logits, labels, weight)
        ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction

    def backward(ctx, grad_loss, _grad_of_grad):
        if grad_loss is None:  # not materialized: nothing flowed back into the loss
            return None, None, None, None, None, None, None
        if torch.is_grad_enabled():
            # Neither the fused gradient nor the backward kernel carries a graph of its
            # dependence on the logits: a second derivative would silently be 0.
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        if not ctx.with_grad:
            logits, labels, weight = ctx.saved_tensors
            grad = backward_op(grad_loss.contiguous(), logits, labels, weight, ctx.alpha,
                               ctx.gamma, ctx.reduction)
            return grad, None, None, None, None, None, None
        if ctx.fused_grad is None:  # scaled in place by the backward that freed the graph
            raise RuntimeError(
                "sigmoid_focal_loss: trying to backward through the graph a second time; "
                "specify retain_graph=True the first time")
        grad = ctx.fused_grad
        if _functionalized(grad) or torch._C._autograd._get_current_graph_task_keep_graph():
            # The graph is kept for another backward (retain_graph=True), which needs the
            # gradient as it is: a product, a second [N, C] tensor while it lives. Or
            # AOTAutograd traces this (torch.compile, opcheck), where the forward's gradient
            # output may be returned too and must not be mutated; the compiler plans the
            # product's memory.
            return grad * grad_loss, None, None, None, None, None, None
        # The last use: scaled in place and handed on, the only [N, C] tensor of the loss.
        ctx.fused_grad = None
        return grad.mul_(grad_loss), None, None, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::sigmoid_focal_loss")(sigmoid_focal_loss_fake)
    torch.library.register_fake("fcos_fast::sigmoid_focal_loss_backward")(
        sigmoid_focal_loss_backward_fake)
    register_focal_autograd(
        "fcos_fast::sigmoid_focal_loss",
        lambda *args: torch.ops.fcos_fast.sigmoid_focal_loss_backward(*args))
