"""GIoU loss in Triton: ``fcos_fast::giou_loss_triton`` and its backward op.

Forward: one pass over the box pairs; a program computes ``BLOCK`` losses and either
stores them (``reduction="none"``) or their partial sum, and a one-program second pass
adds the partial sums in a fixed order (deterministic, unlike atomic adds). Backward:
one pass that recomputes the intersection, union and enclosing box from the inputs
(cheaper than saving them) and writes both gradients. The arithmetic and the gradient
follow ``torchvision.ops.generalized_box_iou_loss`` under autograd operation for
operation, in autograd's order of accumulation, including the half/half split of a
``max``/``min`` gradient when two sides tie and the zero intersection gradient of pairs
that do not overlap: compiled without FMA contraction or flush-to-zero (``_common``), loss
and gradients equal the reference's bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcos_fast.kernels._common import (NAN, LaunchConfig, contiguous, device_guard, div_rn,
                                       load_boxes, mul_rn, next_power_of_2, register,
                                       scalar_tensor, wrap_triton)
from fcos_fast.ops.giou_loss import (giou_loss_backward_fake, giou_loss_fake,
                                     register_giou_autograd)

__all__ = ["giou_loss"]



@triton.jit
def _store_boxes(ptr, rows, mask, x1, y1, x2, y2):
    """Inverse of ``_common.load_boxes``: one ``[BLOCK, 4]`` tile store."""
    tile = tl.join(tl.join(x1, x2), tl.join(y1, y2))  # [BLOCK, 2, 2]: [n, i, j] = col 2i + j
    tile = tl.reshape(tile, [x1.shape[0], 4])
    tl.store(ptr + 4 * rows[:, None] + tl.arange(0, 4)[None, :], tile, mask=mask[:, None])


@triton.jit
def _giou_parts(x1, y1, x2, y2, x1g, y1g, x2g, y2g):
    """Intersection, union and enclosing area, with the pieces the backward needs, in
    torchvision's arithmetic operation for operation (see _common: mul_rn, div_rn)."""
    inter_w = tl.minimum(x2, x2g, NAN) - tl.maximum(x1, x1g, NAN)
    inter_h = tl.minimum(y2, y2g, NAN) - tl.maximum(y1, y1g, NAN)
    overlaps = (inter_w > 0) & (inter_h > 0)
    inter = tl.where(overlaps, mul_rn(inter_w, inter_h), 0.0)
    union = mul_rn(x2 - x1, y2 - y1) + mul_rn(x2g - x1g, y2g - y1g) - inter
    enclose_w = tl.maximum(x2, x2g, NAN) - tl.minimum(x1, x1g, NAN)
    enclose_h = tl.maximum(y2, y2g, NAN) - tl.minimum(y1, y1g, NAN)
    enclose = mul_rn(enclose_w, enclose_h)
    return inter, union, enclose, inter_w, inter_h, overlaps, enclose_w, enclose_h


@triton.jit
def _giou_loss_forward_kernel(pred_ptr, target_ptr, eps_ptr, out_ptr, num_boxes,
                              PARTIAL_SUMS: tl.constexpr, BLOCK: tl.constexpr):
    # The program's first row in int64 on its pointers (4 * row overflows int32 from 2^29
    # pairs), rows within the block in int32: no 64-bit vector offsets to hold.
    first = tl.program_id(0).to(tl.int64) * BLOCK
    rows = tl.arange(0, BLOCK)
    ok = rows < tl.minimum(num_boxes - first, BLOCK).to(tl.int32)
    x1, y1, x2, y2 = load_boxes(pred_ptr + 4 * first, rows, ok)
    x1g, y1g, x2g, y2g = load_boxes(target_ptr + 4 * first, rows, ok)
    eps = tl.load(eps_ptr)

    inter, union, enclose, _, _, _, _, _ = _giou_parts(x1, y1, x2, y2, x1g, y1g, x2g, y2g)
    loss = 1 - (div_rn(inter, union + eps) - div_rn(enclose - union, enclose + eps))

    if PARTIAL_SUMS:
        tl.store(out_ptr + tl.program_id(0), tl.sum(tl.where(ok, loss, 0.0)))
    else:
        tl.store(out_ptr + first + rows, loss, mask=ok)


@triton.jit
def _sum_partials_kernel(partials_ptr, out_ptr, num_partials, num_boxes,
                         MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """One program adds the per-program sums in a fixed order (bitwise reproducible)."""
    total = tl.zeros([BLOCK], partials_ptr.dtype.element_ty)
    for start in range(0, num_partials, BLOCK):
        i = start + tl.arange(0, BLOCK)
        total += tl.load(partials_ptr + i, mask=i < num_partials, other=0.0)
    result = tl.sum(total)
    if MEAN:
        result = div_rn(result, tl.cast(num_boxes, result.dtype))
    tl.store(out_ptr, result)


@triton.jit
def _minimum_grads(a, b, grad):
    """Gradients of ``torch.minimum(a, b)`` w.r.t. ``a`` and ``b``, as autograd computes
    them: all to the smaller, halves on a tie (``where(a == b, grad / 2, grad)`` with the
    loser masked to 0)."""
    tie = tl.where(a == b, grad * 0.5, grad)
    return tl.where(a > b, 0.0, tie), tl.where(a < b, 0.0, tie)


@triton.jit
def _maximum_grads(a, b, grad):
    """Gradients of ``torch.maximum(a, b)`` w.r.t. ``a`` and ``b`` (see above)."""
    tie = tl.where(a == b, grad * 0.5, grad)
    return tl.where(a < b, 0.0, tie), tl.where(a > b, 0.0, tie)


@triton.jit
def _axis_grads(lo, hi, lo_t, hi_t, grad_len, grad_len_t, grad_inter, grad_enclose):
    """Gradients of one axis's coordinates: ``(lo, hi)`` of the prediction and
    ``(lo_t, hi_t)`` of the target, given those of the boxes' extents ``hi - lo`` (from
    their areas), of the intersection's ``min(hi, hi_t) - max(lo, lo_t)`` and of the
    enclosing box's ``max(hi, hi_t) - min(lo, lo_t)``.

    Each coordinate gets three contributions, added in the order autograd's engine
    delivers them (the enclosing box's, created last, first; then the extent's; then the
    intersection's): floating-point addition is not associative, so only this order
    gives the reference's bits.
    """
    inter_hi, inter_hi_t = _minimum_grads(hi, hi_t, grad_inter)
    inter_lo, inter_lo_t = _maximum_grads(lo, lo_t, -grad_inter)
    enclose_hi, enclose_hi_t = _maximum_grads(hi, hi_t, grad_enclose)
    enclose_lo, enclose_lo_t = _minimum_grads(lo, lo_t, -grad_enclose)
    return ((enclose_lo - grad_len) + inter_lo, (enclose_hi + grad_len) + inter_hi,
            (enclose_lo_t - grad_len_t) + inter_lo_t, (enclose_hi_t + grad_len_t) + inter_hi_t)


@triton.jit
def _giou_loss_backward_kernel(grad_out_ptr, pred_ptr, target_ptr, eps_ptr,
                               grad_pred_ptr, grad_target_ptr, num_boxes,
                               SCALAR_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    first = tl.program_id(0).to(tl.int64) * BLOCK  # (see the forward)
    rows = tl.arange(0, BLOCK)
    ok = rows < tl.minimum(num_boxes - first, BLOCK).to(tl.int32)
    x1, y1, x2, y2 = load_boxes(pred_ptr + 4 * first, rows, ok)
    x1g, y1g, x2g, y2g = load_boxes(target_ptr + 4 * first, rows, ok)
    eps = tl.load(eps_ptr)
    if SCALAR_GRAD:  # mean or sum: the gradient of every loss is the same
        grad = tl.load(grad_out_ptr) + tl.zeros_like(x1)
    else:
        grad = tl.load(grad_out_ptr + first + rows, mask=ok, other=0.0)

    # Recompute the forward quantities.
    inter, union, enclose, inter_w, inter_h, overlaps, enc_w, enc_h = _giou_parts(
        x1, y1, x2, y2, x1g, y1g, x2g, y2g)
    union_eps = union + eps
    enclose_eps = enclose + eps

    # loss = 1 - (inter / union_eps - gap / enclose_eps), gap = enclose - union,
    # differentiated as autograd does, node by node (div: d/da = grad / b,
    # d/db = -grad * ((a / b) / b); a sum of two contributions is the same either way).
    grad_gap = div_rn(grad, enclose_eps)
    grad_enclose = grad_gap - grad * div_rn(div_rn(enclose - union, enclose_eps), enclose_eps)
    grad_union = grad * div_rn(div_rn(inter, union_eps), union_eps) - grad_gap
    grad_inter = div_rn(-grad, union_eps) - grad_union  # union = area_p + area_t - inter
    # inter = where(overlaps, inter_w * inter_h, 0): nothing flows where they do not.
    grad_product = tl.where(overlaps, grad_inter, 0.0)
    grad_inter_w = grad_product * inter_h
    grad_inter_h = grad_product * inter_w
    grad_enc_w = grad_enclose * enc_h
    grad_enc_h = grad_enclose * enc_w

    # d area / d width = height and vice versa, for both boxes.
    gx1, gx2, gx1g, gx2g = _axis_grads(x1, x2, x1g, x2g, grad_union * (y2 - y1),
                                       grad_union * (y2g - y1g), grad_inter_w, grad_enc_w)
    gy1, gy2, gy1g, gy2g = _axis_grads(y1, y2, y1g, y2g, grad_union * (x2 - x1),
                                       grad_union * (x2g - x1g), grad_inter_h, grad_enc_h)

    _store_boxes(grad_pred_ptr + 4 * first, rows, ok, gx1, gy1, gx2, gy2)
    _store_boxes(grad_target_ptr + 4 * first, rows, ok, gx1g, gy1g, gx2g, gy2g)


# Launch configuration. The kernels are elementwise over box pairs (32 or 64 bytes in,
# 4-8 bytes or 64 bytes out per pair) and memory-bound: 1024 float32 pairs per program at
# 8 warps is 4 pairs per thread, enough loads in flight, within ~145 registers for the
# backward (sm_90, ptxas -v; 4 warps would need ~230); float64 takes 2 pairs per thread
# (4 would need ~255 registers, at the edge of spilling). FCOS's ~10^5 positive pairs per
# batch still fill every SM. Small inputs use one program of the next power of two, with
# fewer warps (no idle lanes, no second partial to add). The table of registers per
# configuration: benchmarks/results/triton_launch_configs.md.
_MAX_WARPS = 8
_SUM_BLOCK = 1024  # partial sums per step of the one-program reduction


def _pairs_config(num_boxes: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of both passes: 4 float32 or 2 float64 pairs per thread."""
    pairs_per_thread = 2 if dtype == torch.float64 else 4
    block = min(_MAX_WARPS * 32 * pairs_per_thread, max(16, next_power_of_2(num_boxes)))
    return block, max(1, block // (32 * pairs_per_thread))


def forward_launch_config(num_boxes: int, dtype: torch.dtype, reduction: str) -> LaunchConfig:
    """``_giou_loss_forward_kernel``: one program per ``BLOCK`` pairs, storing the losses
    or (mean, sum) their partial sum. ``num_boxes > 0``."""
    block, num_warps = _pairs_config(num_boxes, dtype)
    return LaunchConfig((triton.cdiv(num_boxes, block),), num_warps,
                        {"PARTIAL_SUMS": reduction != "none", "BLOCK": block})


def sum_partials_launch_config(reduction: str) -> LaunchConfig:
    """``_sum_partials_kernel``: one program, whatever the number of partial sums."""
    return LaunchConfig((1,), 4, {"MEAN": reduction == "mean", "BLOCK": _SUM_BLOCK})


def backward_launch_config(num_boxes: int, dtype: torch.dtype, reduction: str) -> LaunchConfig:
    """``_giou_loss_backward_kernel``: one program per ``BLOCK`` pairs, with one upstream
    gradient per pair or (mean, sum) one for all. ``num_boxes > 0``."""
    block, num_warps = _pairs_config(num_boxes, dtype)
    return LaunchConfig((triton.cdiv(num_boxes, block),), num_warps,
                        {"SCALAR_GRAD": reduction != "none", "BLOCK": block})


def giou_loss_forward(pred: torch.Tensor, target: torch.Tensor, reduction: str,
                      eps: float) -> torch.Tensor:
    """The launcher of ``fcos_fast::giou_loss_triton`` (traceable)."""
    pred, target = contiguous(pred, target)
    num_boxes = pred.shape[0]
    if num_boxes == 0:
        # torchvision: the loss of nothing is empty, and its sum and its mean are 0.
        return pred.new_zeros((0,) if reduction == "none" else ())
    with device_guard(pred):
        config = forward_launch_config(num_boxes, pred.dtype, reduction)
        num_programs = config.grid[0]
        out = pred.new_empty((num_boxes,) if reduction == "none" else (num_programs,))
        wrap_triton(_giou_loss_forward_kernel)[config.grid](
            pred, target, scalar_tensor(eps, pred), out, num_boxes, **config.kwargs)
        if reduction == "none":
            return out
        total = pred.new_empty(())
        config = sum_partials_launch_config(reduction)
        wrap_triton(_sum_partials_kernel)[config.grid](
            out, total, num_programs, num_boxes, **config.kwargs)
        return total


def giou_loss_backward(grad_output: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                       reduction: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The launcher of ``fcos_fast::giou_loss_backward_triton`` (traceable)."""
    grad_output, pred, target = contiguous(grad_output, pred, target)
    num_boxes = pred.shape[0]
    grad_pred = torch.empty_like(pred)
    grad_target = torch.empty_like(target)
    if num_boxes == 0:
        return grad_pred, grad_target
    grad_output = grad_output.to(pred.dtype)
    if reduction == "mean":
        # d(sum / N) = grad / N, the very division autograd's mean backward makes.
        grad_output = grad_output / num_boxes
    with device_guard(pred):
        config = backward_launch_config(num_boxes, pred.dtype, reduction)
        wrap_triton(_giou_loss_backward_kernel)[config.grid](
            grad_output, pred, target, scalar_tensor(eps, pred), grad_pred, grad_target,
            num_boxes, **config.kwargs)
    return grad_pred, grad_target


@torch.library.triton_op("fcos_fast::giou_loss_triton", mutates_args=())
def _giou_loss_triton(pred: torch.Tensor, target: torch.Tensor, reduction: str,
                      eps: float) -> torch.Tensor:
    return giou_loss_forward(pred, target, reduction, eps)


@torch.library.triton_op("fcos_fast::giou_loss_backward_triton", mutates_args=())
def _giou_loss_backward_triton(grad_output: torch.Tensor, pred: torch.Tensor,
                               target: torch.Tensor, reduction: str, eps: float
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return giou_loss_backward(grad_output, pred, target, reduction, eps)


register(_giou_loss_triton, giou_loss_fake)
register(_giou_loss_backward_triton, giou_loss_backward_fake)
register_giou_autograd("fcos_fast::giou_loss_triton",
                       lambda *args: torch.ops.fcos_fast.giou_loss_backward_triton(*args))


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str,
              eps: float) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.giou_loss`` (validated ``[N, 4]`` inputs)."""
    return torch.ops.fcos_fast.giou_loss_triton(pred, target, reduction, eps)
