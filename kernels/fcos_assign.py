"""FCOS target assignment in Triton: ``torch.ops.fcos_fast.fcos_assign_triton``.

A program owns ``BLOCK_P`` points of one image and walks that image's boxes in chunks
of ``BLOCK_G``, keeping per point the least-area match seen so far. The largest tensor
it builds is one ``[BLOCK_P, BLOCK_G]`` tile in registers: memory is the ``[B, P]``
output, never ``P x G``. The semantics are those of ``fcos_fast.ops.fcos_assign``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcos_fast.kernels._common import (NAN, LaunchConfig, checked_grid, contiguous,
                                       device_guard, load_boxes, next_power_of_2, register,
                                       wrap_triton)
from fcos_fast.ops.fcos_assign import fcos_assign_fake

__all__ = ["fcos_assign"]


@triton.jit
def _fcos_assign_kernel(
    points_ptr, lower_ptr, upper_ptr, radius_ptr,  # [P, 2], [P], [P], [P]
    boxes_ptr, num_gt_ptr,                         # [B, G, 4], [B] int64
    matched_ptr,                                   # [B, P] int64, written
    num_points, num_slots,
    BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
):
    # One grid axis, images outermost (grid axis 1 holds at most 65,535 programs); int64
    # point offsets (2 * p overflows int32 from 2^30 points).
    blocks_per_image = tl.cdiv(num_points, BLOCK_P)
    image = tl.program_id(0) // blocks_per_image
    block = tl.program_id(0) - image * blocks_per_image
    p = block.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < num_points
    x = tl.load(points_ptr + 2 * p, mask=p_ok, other=0.0)[:, None]
    y = tl.load(points_ptr + 2 * p + 1, mask=p_ok, other=0.0)[:, None]
    lower = tl.load(lower_ptr + p, mask=p_ok, other=0.0)[:, None]
    upper = tl.load(upper_ptr + p, mask=p_ok, other=0.0)[:, None]
    radius = tl.load(radius_ptr + p, mask=p_ok, other=0.0)[:, None]

    # Rows g >= num_gt[b] are padding. Clamping to [0, G] keeps an unvalidated count
    # (FCOS_FAST_VALIDATE=0) from reading outside this image's boxes.
    num_gt = tl.load(num_gt_ptr + image)
    num_gt = tl.minimum(tl.maximum(num_gt, 0), num_slots).to(tl.int32)
    image_boxes = boxes_ptr + image.to(tl.int64) * num_slots * 4

    best_area = tl.full([BLOCK_P], float("inf"), x.dtype)
    best = tl.full([BLOCK_P], -1, tl.int32)
    for g0 in range(0, num_gt, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        g_ok = g < num_gt
        x1, y1, x2, y2 = load_boxes(image_boxes, g, g_ok)
        x1, y1, x2, y2 = x1[None, :], y1[None, :], x2[None, :], y2[None, :]
        # The reference's arithmetic, operation for operation ((x1 + x2) * 0.5 is exactly
        # (x1 + x2) / 2), compiled without FMA contraction or flush-to-zero (_common).
        center_x = (x1 + x2) * 0.5
        center_y = (y1 + y2) * 0.5
        left = x - x1
        top = y - y1
        right = x2 - x
        bottom = y2 - y
        nearest_side = tl.minimum(tl.minimum(left, top, NAN), tl.minimum(right, bottom, NAN), NAN)
        farthest_side = tl.maximum(tl.maximum(left, top, NAN), tl.maximum(right, bottom, NAN),
                                   NAN)
        near_center = tl.maximum(tl.abs(x - center_x), tl.abs(y - center_y), NAN) < radius
        area = (x2 - x1) * (y2 - y1)
        is_match = (near_center & (nearest_side > 0) & (farthest_side > lower)
                    & (farthest_side < upper) & g_ok[None, :])
        # An infinite or NaN area never beats the initial +inf (the reference's strict
        # `area < best_area`), so such a match is no match.
        is_match = is_match & (area < float("inf"))
        area = tl.where(is_match, area, float("inf"))
        # argmin breaks ties to the lower index inside the chunk; the strict `<` keeps
        # the earlier chunk on a tie across chunks: ties go to the lower box index.
        chunk_area, chunk_best = tl.min(area, axis=1, return_indices=True,
                                        return_indices_tie_break_left=True)
        better = chunk_area < best_area
        best_area = tl.where(better, chunk_area, best_area)
        best = tl.where(better, g0 + chunk_best, best)

    tl.store(matched_ptr + image.to(tl.int64) * num_points + p, best.to(tl.int64), mask=p_ok)


def launch_config(num_points: int, num_images: int, num_slots: int,
                  dtype: torch.dtype) -> LaunchConfig:
    """``_fcos_assign_kernel`` for ``num_images`` images of ``num_points`` points and
    ``num_slots`` padded boxes (all > 0).

    The work is a ``P x G`` elementwise test with no reuse worth staging in shared
    memory, so the tile is sized for registers: 128 points x up to 32 float32 boxes at 8
    warps is 16 pairs per thread, ~130 registers for sm_90 (ptxas -v; at 4 warps ~250,
    half the occupancy); float64 doubles every register, so its chunk stops at 16 boxes
    (32 spills). Fewer box slots shrink the box chunk rather than wasting lanes on
    padding; with ~17k-20k points per image, 128 points per program already gives ~150
    programs per image, a full GPU at batch 8-16, so the point block does not grow.
    """
    max_block_g = 16 if dtype == torch.float64 else 32
    block_p = 128
    block_g = min(max_block_g, next_power_of_2(num_slots))
    grid = checked_grid((num_images * triton.cdiv(num_points, block_p),), "fcos_assign",
                        f"{num_images} images of {num_points} points")
    return LaunchConfig(grid, 8, {"BLOCK_P": block_p, "BLOCK_G": block_g})


def fcos_assign_launch(points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                       radius: torch.Tensor, gt_boxes: torch.Tensor, num_gt: torch.Tensor
                       ) -> torch.Tensor:
    """The launcher of ``fcos_fast::fcos_assign_triton`` (traceable)."""
    points, lower, upper, radius, gt_boxes, num_gt = contiguous(points, lower, upper, radius,
                                                                gt_boxes, num_gt)
    num_images, num_slots = gt_boxes.shape[0], gt_boxes.shape[1]
    num_points = points.shape[0]
    if num_images == 0 or num_points == 0 or num_slots == 0:
        return torch.full((num_images, num_points), -1, dtype=torch.int64, device=points.device)
    matched = torch.empty((num_images, num_points), dtype=torch.int64, device=points.device)
    config = launch_config(num_points, num_images, num_slots, points.dtype)
    with device_guard(points):
        wrap_triton(_fcos_assign_kernel)[config.grid](
            points, lower, upper, radius, gt_boxes, num_gt, matched, num_points, num_slots,
            **config.kwargs)
    return matched


@torch.library.triton_op("fcos_fast::fcos_assign_triton", mutates_args=())
def _fcos_assign_triton(points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                        radius: torch.Tensor, gt_boxes: torch.Tensor,
                        num_gt: torch.Tensor) -> torch.Tensor:
    return fcos_assign_launch(points, lower, upper, radius, gt_boxes, num_gt)


register(_fcos_assign_triton, fcos_assign_fake)


def fcos_assign(points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                radius: torch.Tensor, gt_boxes: torch.Tensor, num_gt: torch.Tensor
                ) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.fcos_assign`` (validated inputs)."""
    return torch.ops.fcos_fast.fcos_assign_triton(points, lower, upper, radius, gt_boxes,
                                                  num_gt)
