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
from triton.language.extra import libdevice

from fcos_fast.kernels._common import (_INTERPRET, LaunchConfig, contiguous, device_guard,
                                       div_rn, next_power_of_2, register, scalar_tensor,
                                       wrap_triton)
from fcos_fast.kernels.giou_loss import _sum_partials_kernel, sum_partials_launch_config
from fcos_fast.ops.sigmoid_focal_loss import (register_focal_autograd,
                                              sigmoid_focal_loss_backward_fake,
                                              sigmoid_focal_loss_fake)

__all__ = ["sigmoid_focal_loss"]

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
def _sigmoid_focal_loss_kernel(logits_ptr, labels_ptr, weight_ptr, params_ptr, scale_ptr,
                               loss_ptr, grad_ptr, num_elements, num_classes, partial_offset,
                               HAS_WEIGHT: tl.constexpr, LOSS: tl.constexpr, GRAD: tl.constexpr,
                               BLOCK: tl.constexpr):
    """params_ptr: (alpha of the positive class, alpha of the negatives, gamma)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < num_elements
    if logits_ptr.dtype.element_ty == tl.float64:
        x = tl.load(logits_ptr + offsets, mask=ok, other=0.0)
    else:
        x = tl.load(logits_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    row = offsets // num_classes
    label = tl.load(labels_ptr + row, mask=ok, other=-1)
    positive = (offsets - row * num_classes) == label  # no label outside [0, C) matches

    # focal_math.h, terms(): w = x on a negative class, -x on the positive one.
    w = tl.where(positive, -x, x)
    e = _exp(-tl.abs(w))
    d = 1.0 + e
    r = div_rn(tl.full(d.shape, 1.0, d.dtype), d)
    log1p_e = _log(d) - ((d - 1.0) - e) * r  # log1p(e): log(1 + e) corrected for its rounding
    er = e * r
    ahead = w >= 0
    softplus = tl.where(w > 0, w, 0.0) + log1p_e
    sigmoid = tl.where(ahead, r, er)
    sigmoid_neg = tl.where(ahead, er, r)
    gamma = tl.load(params_ptr + 2)
    # (1 - p_t)^gamma = exp(gamma * log sigmoid(w)), and exactly 1 for gamma = 0 (where
    # exp(0 * -inf) would be NaN).
    modulation = tl.where(gamma == 0, 1.0,
                          _exp(gamma * (tl.where(w < 0, w, 0.0) - log1p_e)))
    alpha_t = tl.where(positive, tl.load(params_ptr), tl.load(params_ptr + 1))
    if HAS_WEIGHT:
        row_weight = tl.load(weight_ptr + row, mask=ok, other=0.0)

    if LOSS != 0:
        loss = alpha_t * (softplus * modulation)
        if HAS_WEIGHT:
            loss = loss * row_weight
        if LOSS == 1:
            tl.store(loss_ptr + offsets, loss, mask=ok)
        else:
            tl.store(loss_ptr + partial_offset + tl.program_id(0),
                     tl.sum(tl.where(ok, loss, 0.0)))
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


# Launch configuration. Elementwise and bound by memory and by exp, log (twice: the
# general (1 - p_t)^gamma, which gamma = 2 takes too: one compiled variant fewer per
# launch kind, and cheap beside the memory traffic on a GPU) and a division per element:
# 16 bytes of logits per thread (4 float32, 8 bfloat16/float16, 2 float64: one vector load
# each) at 4 warps, whatever the size (focal losses are large; a small one wastes lanes
# of one program, not time). The table of registers:
# benchmarks/results/triton_launch_configs.md.
_WARPS = 4
# ptxas of Triton 3.6 stopped a 4-warp launch at 64 registers and spilled 8 bytes (sm_80,
# weighted mean with the gradient, bfloat16); 3.8's needed at most 80. Room up to 128
# keeps four blocks a multiprocessor.
_MAX_REGISTERS = 128
# Elements per launch: offsets stay 32-bit (pid * BLOCK + BLOCK < 2^31); larger inputs
# are launched in chunks of rows.
MAX_LAUNCH_ELEMENTS = 2**31 - 2**16


def launch_config(num_elements: int, dtype: torch.dtype, *, loss: int, grad: int,
                  has_weight: bool) -> LaunchConfig:
    """``_sigmoid_focal_loss_kernel``: one program per ``BLOCK`` elements of a launch of
    ``0 < num_elements <= MAX_LAUNCH_ELEMENTS``."""
    block = _WARPS * 32 * (16 // _ELEMENT_SIZE[dtype])
    return LaunchConfig((triton.cdiv(num_elements, block),), _WARPS,
                        {"HAS_WEIGHT": has_weight, "LOSS": loss, "GRAD": grad, "BLOCK": block},
                        max_registers=_MAX_REGISTERS)


_ELEMENT_SIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}


def row_chunks(num_rows: int, num_classes: int) -> list[tuple[int, int]]:
    """``[first, last)`` rows of each launch, at most MAX_LAUNCH_ELEMENTS elements each.
    Chunks are multiples of 16,384 rows where that fits, so that every slice keeps its
    pointers 16-byte aligned and each launch's per-program sums start at a multiple of 16,
    as in the specialisation a single launch compiles."""
    rows = MAX_LAUNCH_ELEMENTS // max(num_classes, 1)
    rows = max(1, rows // 16384 * 16384 if rows >= 16384 else rows)
    return [(first, min(num_rows, first + rows)) for first in range(0, num_rows, rows)]


def _params(alpha: float, gamma: float, like: torch.Tensor) -> torch.Tensor:
    """``(alpha_t of the positive class, of the negatives, gamma)`` in the computing dtype
    (``_common``: one rounding rule on every device), filled with each value as a kernel
    argument (no host-to-device copy, no sync); alpha < 0 weighs both by 1."""
    alpha_positive, alpha_negative = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    params = like.new_full((3,), alpha_positive)
    params[1].fill_(alpha_negative)
    params[2].fill_(gamma)
    return params


def _launches(logits, labels, weight, params, *, loss_mode, grad_mode, scale=None, loss=None,
              grad=None) -> int:
    """Launches the kernel over every chunk of rows; the number of programs (per-program
    sums written to ``loss`` for LOSS_PARTIAL_SUMS)."""
    num_rows, num_classes = logits.shape
    programs = 0
    for first, last in row_chunks(num_rows, num_classes):
        config = launch_config((last - first) * num_classes, logits.dtype, loss=loss_mode,
                               grad=grad_mode, has_weight=weight is not None)
        rows = slice(first, last)
        wrap_triton(_sigmoid_focal_loss_kernel)[config.grid](
            logits[rows], labels[rows], params if weight is None else weight[rows], params,
            params if scale is None else (scale[rows] if grad_mode == GRAD_UPSTREAM else scale),
            params if loss is None else (loss[rows] if loss_mode == LOSS_STORE else loss),
            logits[rows] if grad is None else grad[rows], (last - first) * num_classes,
            num_classes, programs, **config.kwargs)
        programs += config.grid[0]
    return programs


def num_programs(logits: torch.Tensor) -> int:
    num_rows, num_classes = logits.shape
    return sum(launch_config((last - first) * num_classes, logits.dtype, loss=LOSS_STORE,
                             grad=GRAD_NONE, has_weight=False).grid[0]
               for first, last in row_chunks(num_rows, num_classes))


def sigmoid_focal_loss_forward(logits: torch.Tensor, labels: torch.Tensor,
                               weight: torch.Tensor | None, alpha: float, gamma: float,
                               reduction: str, with_grad: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The launcher of ``fcos_fast::sigmoid_focal_loss_triton`` (traceable)."""
    logits, labels, weight = contiguous(logits, labels, weight)
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
            params = _params(alpha, gamma, loss)
            scale = scalar_tensor(1.0, loss) if with_grad else None
            _launches(logits, labels, weight, params, loss_mode=LOSS_STORE, grad_mode=grad_mode,
                      scale=scale, loss=loss, grad=grad if with_grad else None)
            return loss, grad
        partials = logits.new_empty((num_programs(logits),), dtype=compute)
        params = _params(alpha, gamma, partials)
        # The gradient of the mean divides by N * C, as autograd's mean backward does.
        scale = (scalar_tensor(1.0 / num_elements if reduction == "mean" else 1.0, partials)
                 if with_grad else None)
        count = _launches(logits, labels, weight, params, loss_mode=LOSS_PARTIAL_SUMS,
                          grad_mode=grad_mode, scale=scale, loss=partials,
                          grad=grad if with_grad else None)
        total = logits.new_empty((), dtype=compute)
        config = sum_partials_launch_config(reduction)
        wrap_triton(_sum_partials_kernel)[config.grid](
            partials, total, count, num_elements, **config.kwargs)
        return total, grad


def sigmoid_focal_loss_backward(grad_output: torch.Tensor, logits: torch.Tensor,
                                labels: torch.Tensor, weight: torch.Tensor | None, alpha: float,
                                gamma: float, reduction: str) -> torch.Tensor:
    """The launcher of ``fcos_fast::sigmoid_focal_loss_backward_triton`` (traceable): the
    forward's arithmetic again, times the upstream gradient."""
    logits, labels, weight = contiguous(logits, labels, weight)
    grad = torch.empty_like(logits)
    num_elements = logits.numel()
    if num_elements == 0:
        return grad
    compute = torch.promote_types(logits.dtype, torch.float32)
    grad_output = grad_output.to(compute)
    if reduction == "mean":
        # d(sum / (N * C)) = grad / (N * C), the very division autograd's mean backward makes.
        grad_output = grad_output / num_elements
    with device_guard(logits):
        _launches(logits, labels, weight, _params(alpha, gamma, grad_output),
                  loss_mode=LOSS_NONE,
                  grad_mode=GRAD_UPSTREAM if reduction == "none" else GRAD_SCALED,
                  scale=grad_output.contiguous().reshape(logits.shape if reduction == "none"
                                                         else (1,)),
                  grad=grad)
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
