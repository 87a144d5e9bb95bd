"""Sigmoid focal loss in Triton: ``fcos_fast::sigmoid_focal_loss_triton`` and its backward.

One kernel walks the ``[N, C]`` logits as a flat array, ``BLOCK`` elements per program:
each element's row is ``offset // C`` and it is the row's positive class when its column
equals the row's label, so no one-hot tensor is read or made. Per element it computes the
loss (stored, or summed per program for ``mean``/``sum``) and, when asked, the gradient:
of the reduced loss in the forward pass (``with_grad``), or times the upstream gradient in
the backward op, in the logits' dtype (bfloat16 logits are read as bfloat16 and their
gradient written as bfloat16; the math is float32). The per-program sums are added by
giou_loss's one-program ``_sum_partials_kernel`` in a fixed order: deterministic, no
atomics.

The math is ``csrc/ops/focal_math.h``'s (see there): one exp, one log (log1p of
``exp(-|w|)`` as a corrected log) and one division per element, with libdevice's exp and
log, the functions CUDA's ``expf``/``logf`` call, so the native CUDA kernel and this one
compute the same functions. libdevice's exp and log are themselves fma polynomials, so the
PTX holds fma instructions (ahead_of_time.LIBDEVICE_KERNELS); the launch still compiles
with ``EXACT_FP``: no contraction of this kernel's own arithmetic, no flush-to-zero. The
interpreter has no libdevice and uses NumPy's exp and log.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from triton.language.extra import libdevice

from fcos_fast.kernels._common import (_INTERPRET, LaunchConfig, device_guard, div_rn,
                                       next_power_of_2, register, scalar_tensor)
from fcos_fast.kernels.giou_loss import _sum_partials_kernel, sum_partials_launch_config
from fcos_fast.ops.sigmoid_focal_loss import (register_focal_autograd,
                                              sigmoid_focal_loss_backward_fake,
                                              sigmoid_focal_loss_fake)

__all__ = ["sigmoid_focal_loss"]

# GAMMA: (1 - p_t)^gamma as a square, as 1, or as exp(gamma * log(1 - p_t)) (focal_math.h).
GAMMA_TWO, GAMMA_ZERO, GAMMA_OTHER = 0, 1, 2
# LOSS: none (backward), stored per element, or summed per program.
LOSS_NONE, LOSS_STORE, LOSS_PARTIAL_SUMS = 0, 1, 2
# GRAD: none, times one scale for all (with_grad; backward of mean/sum), or times the
# upstream gradient of each element (backward of "none").
GRAD_NONE, GRAD_SCALED, GRAD_UPSTREAM = 0, 1, 2


@triton.jit
def _exp(x):
    if _INTERPRET:
        return tl.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def _log(x):
    if _INTERPRET:
        return tl.log(x)
    else:
        return libdevice.log(x)


@triton.jit
def _sigmoid_focal_loss_kernel(logits_ptr, labels_ptr, weight_ptr, alpha_ptr, gamma_ptr,
                               scale_ptr, loss_ptr, grad_ptr, num_elements, num_classes,
                               USE_ALPHA: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                               GAMMA: tl.constexpr, LOSS: tl.constexpr, GRAD: tl.constexpr,
                               WIDE: tl.constexpr, BLOCK: tl.constexpr):
    if WIDE:  # past 2^31 elements: 64-bit offsets (and divisions)
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < num_elements
    if logits_ptr.dtype.element_ty == tl.float64:
        x = tl.load(logits_ptr + offsets, mask=ok, other=0.0)
    else:
        x = tl.load(logits_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    row = offsets // num_classes
    label = tl.load(labels_ptr + row, mask=ok, other=-1)
    positive = (offsets - row * num_classes) == label

    # focal_math.h, terms(): w = x on a negative class, -x on the positive one.
    w = tl.where(positive, -x, x)
    e = _exp(-tl.abs(w))
    d = 1.0 + e
    r = div_rn(tl.full(d.shape, 1.0, d.dtype), d)
    log1p_e = _log(d) - ((d - 1.0) - e) * r
    er = e * r
    ahead = w >= 0
    softplus = tl.where(w > 0, w, 0.0) + log1p_e
    sigmoid = tl.where(ahead, r, er)
    sigmoid_neg = tl.where(ahead, er, r)
    if GAMMA == 0:
        modulation = sigmoid * sigmoid
        gamma = 2.0
    elif GAMMA == 1:
        modulation = tl.full(x.shape, 1.0, x.dtype)
        gamma = 0.0
    else:
        gamma = tl.load(gamma_ptr)
        modulation = _exp(gamma * (tl.where(w < 0, w, 0.0) - log1p_e))
    if USE_ALPHA:
        alpha = tl.load(alpha_ptr)
        alpha_t = tl.where(positive, alpha, 1.0 - alpha)
    else:
        alpha_t = tl.full(x.shape, 1.0, x.dtype)
    if HAS_WEIGHT:
        row_weight = tl.load(weight_ptr + row, mask=ok, other=0.0)

    if LOSS != 0:
        loss = alpha_t * (softplus * modulation)
        if HAS_WEIGHT:
            loss = loss * row_weight
        if LOSS == 1:
            tl.store(loss_ptr + offsets, loss, mask=ok)
        else:
            tl.store(loss_ptr + tl.program_id(0), tl.sum(tl.where(ok, loss, 0.0)))
    if GRAD != 0:
        # focal_math.h, grad_w(): softplus * sigmoid(-w) is 0 where sigmoid(-w) is.
        tail = tl.where(sigmoid_neg == 0, 0.0, softplus * sigmoid_neg)
        grad = alpha_t * (modulation * (sigmoid + gamma * tail))
        grad = tl.where(positive, -grad, grad)
        if HAS_WEIGHT:
            grad = grad * row_weight
        if GRAD == 1:
            grad = grad * tl.load(scale_ptr)
        else:
            grad = grad * tl.load(scale_ptr + offsets, mask=ok, other=0.0)
        tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=ok)


# Launch configuration. Elementwise and bound by exp, log and a division per element:
# 16 bytes of logits per thread (4 float32, 8 bfloat16/float16, 2 float64: one vector
# load each), 4 warps. Small inputs take one program of the next power of two, with fewer
# warps. The table of registers: benchmarks/results/triton_launch_configs.md.
_WARPS = 4
_WIDE = 2**31  # elements from which offsets are 64-bit


def launch_config(num_elements: int, dtype: torch.dtype, *, loss: int, grad: int, gamma: int,
                  use_alpha: bool, has_weight: bool) -> LaunchConfig:
    """``_sigmoid_focal_loss_kernel``: one program per ``BLOCK`` elements.
    ``num_elements > 0``."""
    per_thread = 16 // torch.empty((), dtype=dtype).element_size()
    block = min(_WARPS * 32 * per_thread, max(16, next_power_of_2(num_elements)))
    return LaunchConfig((triton.cdiv(num_elements, block),), max(1, block // (32 * per_thread)),
                        {"USE_ALPHA": use_alpha, "HAS_WEIGHT": has_weight, "GAMMA": gamma,
                         "LOSS": loss, "GRAD": grad, "WIDE": num_elements >= _WIDE,
                         "BLOCK": block})


def gamma_mode(gamma: float) -> int:
    return GAMMA_TWO if gamma == 2.0 else GAMMA_ZERO if gamma == 0.0 else GAMMA_OTHER


def _launch(config: LaunchConfig, logits, labels, weight, alpha, gamma, *, scale=None,
            loss=None, grad=None, compute_like: torch.Tensor) -> None:
    """One launch. alpha and gamma go in as one-element tensors of the computing dtype
    (``_common``: one rounding rule on every device); pointers a launch does not read get
    a tensor of their dtype (the constexprs keep them unread)."""
    alpha_t = scalar_tensor(alpha, compute_like)
    gamma_t = (scalar_tensor(gamma, compute_like)
               if config.constexprs["GAMMA"] == GAMMA_OTHER else alpha_t)
    wrap_triton(_sigmoid_focal_loss_kernel)[config.grid](
        logits, labels, alpha_t if weight is None else weight, alpha_t, gamma_t,
        alpha_t if scale is None else scale, alpha_t if loss is None else loss,
        logits if grad is None else grad, logits.numel(), logits.shape[1], **config.kwargs)


def _config(logits, weight, alpha, gamma, *, loss, grad) -> LaunchConfig:
    return launch_config(logits.numel(), logits.dtype, loss=loss, grad=grad,
                         gamma=gamma_mode(gamma), use_alpha=alpha >= 0,
                         has_weight=weight is not None)


def sigmoid_focal_loss_forward(logits: torch.Tensor, labels: torch.Tensor,
                               weight: torch.Tensor | None, alpha: float, gamma: float,
                               reduction: str, with_grad: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The launcher of ``fcos_fast::sigmoid_focal_loss_triton`` (traceable)."""
    num_rows, num_classes = logits.shape
    num_elements = num_rows * num_classes
    compute = torch.promote_types(logits.dtype, torch.float32)
    grad = torch.empty_like(logits) if with_grad else logits.new_empty((0,))
    if num_elements == 0:
        # torch's sum of nothing is 0 and its mean NaN (torchvision's loss.mean()).
        if reduction == "none":
            return logits.new_empty((num_rows, num_classes), dtype=compute), grad
        return logits.new_full((), 0.0 if reduction == "sum" else float("nan"),
                               dtype=compute), grad
    grad_mode = GRAD_SCALED if with_grad else GRAD_NONE
    with device_guard(logits):
        if reduction == "none":
            loss = logits.new_empty((num_rows, num_classes), dtype=compute)
            config = _config(logits, weight, alpha, gamma, loss=LOSS_STORE, grad=grad_mode)
            scale = scalar_tensor(1.0, loss) if with_grad else None
            _launch(config, logits, labels, weight, alpha, gamma, scale=scale, loss=loss,
                    grad=grad if with_grad else None, compute_like=loss)
            return loss, grad
        config = _config(logits, weight, alpha, gamma, loss=LOSS_PARTIAL_SUMS, grad=grad_mode)
        num_programs = config.grid[0]
        partials = logits.new_empty((num_programs,), dtype=compute)
        # The gradient of the mean divides by N * C, as autograd's mean backward does.
        scale = (scalar_tensor(1.0 / num_elements if reduction == "mean" else 1.0, partials)
                 if with_grad else None)
        _launch(config, logits, labels, weight, alpha, gamma, scale=scale, loss=partials,
                grad=grad if with_grad else None, compute_like=partials)
        total = logits.new_empty((), dtype=compute)
        config = sum_partials_launch_config(reduction)
        wrap_triton(_sum_partials_kernel)[config.grid](
            partials, total, num_programs, num_elements, **config.kwargs)
        return total, grad


def sigmoid_focal_loss_backward(grad_output: torch.Tensor, logits: torch.Tensor,
                                labels: torch.Tensor, weight: torch.Tensor | None, alpha: float,
                                gamma: float, reduction: str) -> torch.Tensor:
    """The launcher of ``fcos_fast::sigmoid_focal_loss_backward_triton`` (traceable): the
    forward's arithmetic again, times the upstream gradient."""
    grad = torch.empty_like(logits)
    num_elements = logits.numel()
    if num_elements == 0:
        return grad
    compute = torch.promote_types(logits.dtype, torch.float32)
    grad_output = grad_output.to(compute)
    if reduction == "mean":
        # d(sum / (N * C)) = grad / (N * C), the very division autograd's mean backward makes.
        grad_output = grad_output / num_elements
    grad_mode = GRAD_UPSTREAM if reduction == "none" else GRAD_SCALED
    with device_guard(logits):
        config = _config(logits, weight, alpha, gamma, loss=LOSS_NONE, grad=grad_mode)
        _launch(config, logits, labels, weight, alpha, gamma,
                scale=grad_output.contiguous().reshape(-1), grad=grad,
                compute_like=grad_output)
    return grad


@torch.library.triton_op("fcos_fast::sigmoid_focal_loss_triton", mutates_args=())
def _sigmoid_focal_loss_triton(logits: torch.Tensor, labels: torch.Tensor,
                               weight: torch.Tensor | None, alpha: float, gamma: float,
                               reduction: str, with_grad: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return sigmoid_focal_loss_forward(logits, labels, weight, alpha, gamma, reduction,
                                      with_grad)


@torch.library.triton_op("fcos_fast::sigmoid_focal_loss_backward_triton", mutates_args=())
def _sigmoid_focal_loss_backward_triton(grad_output: torch.Tensor, logits: torch.Tensor,
                                        labels: torch.Tensor, weight: torch.Tensor | None,
                                        alpha: float, gamma: float, reduction: str
                                        ) -> torch.Tensor:
    return sigmoid_focal_loss_backward(grad_output, logits, labels, weight, alpha, gamma,
                                       reduction)


register(_sigmoid_focal_loss_triton, sigmoid_focal_loss_fake)
register(_sigmoid_focal_loss_backward_triton, sigmoid_focal_loss_backward_fake)
register_focal_autograd(
    "fcos_fast::sigmoid_focal_loss_triton",
    lambda *args: torch.ops.fcos_fast.sigmoid_focal_loss_backward_triton(*args))


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                       alpha: float, gamma: float, reduction: str, with_grad: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``triton`` backend of ``fcos_fast.ops.sigmoid_focal_loss`` (validated ``[N, C]``
    logits, int64 labels, weight in the computing dtype)."""
    return torch.ops.fcos_fast.sigmoid_focal_loss_triton(logits, labels, weight, alpha, gamma,
                                                         reduction, with_grad)
