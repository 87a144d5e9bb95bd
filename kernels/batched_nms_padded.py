"""Fixed-size class-aware NMS in Triton: ``fcos_fast::batched_nms_padded_triton``.

The kernels are those of ``kernels/nms.py`` (the 64 x 64-tile suppression mask of each
segment of sweep positions, then a greedy sweep per segment), run on a sweep order and a
segment table that the launcher computes on the device with static shapes:

1. In each of the ``S`` segments, its ``n = counts[s]`` used slots are sorted by
   decreasing score (stable: ties keep the lower slot first; the unused slots last), and,
   with ``idxs``, then stably by category, so that every (segment, category) is a run of
   sweep positions still in score order. These runs are the kernels' segments (call them
   groups): boxes of different groups never suppress each other.
2. The used slots are packed one segment after the other into ``S * L`` sweep positions
   (the tail past ``sum(n)`` unused), and the group table is built by scatters and
   prefix sums. A group of ``m <= L`` boxes owns ``m * ceil(m / 64)`` mask words, so the
   mask, allocated for the worst case, is ``S * L * ceil(L / 64)`` words, never
   ``(S * L)^2``; the work is the sum over groups of ``m^2``.
3. The sweep's kept flags go back through the packing and the sort to the slots.

Every grid and allocation follows from ``S`` and ``L``; the number of groups and their
sizes stay on the device (the kernels read them), so there is no host-device
synchronisation. No address depends on a box or score value.
"""

from __future__ import annotations

import torch
import triton

from fcos_fast.kernels import nms
from fcos_fast.kernels._common import (LaunchConfig, contiguous, descending_score_order,
                                       device_guard, register, scalar_tensor, wrap_triton)
# By name: triton_op finds the kernels of an op in `wrap_triton(<name>)` calls (for
# AOTAutograd's cache key), not in `wrap_triton(module.kernel)`.
from fcos_fast.kernels.nms import _nms_mask_kernel, _nms_sweep_kernel
from fcos_fast.ops.batched_nms_padded import batched_nms_padded_fake

__all__ = ["batched_nms_padded"]

_WORD = 64  # boxes per mask word


def mask_launch_config(num_segments: int, length: int) -> LaunchConfig:
    """``nms._nms_mask_kernel`` over the groups of ``S * L > 0`` sweep positions."""
    return nms.mask_launch_config(num_segments * length, batched=True)


def sweep_launch_config(num_segments: int, length: int) -> LaunchConfig:
    """``nms._nms_sweep_kernel``: warps for the longest possible group (a whole segment
    of ``L`` boxes), programs walking up to ``S * L`` groups, as ``batched_nms`` with that
    many boxes would."""
    by_length = nms.sweep_launch_config(length, batched=True)
    by_positions = nms.sweep_launch_config(num_segments * length, batched=True)
    return by_length._replace(grid=by_positions.grid)


def _sweep_order(scores: torch.Tensor, used: torch.Tensor, idxs: torch.Tensor | None
                 ) -> torch.Tensor:
    """``[S, L]``: the slots of each segment in sweep order, the used ones first."""
    length = scores.shape[1]
    valid = torch.arange(length, device=scores.device) < used[:, None]
    # An unused slot is -inf: it ties only with a used slot of score -inf, which the
    # stable sort keeps first (its slot is lower). NaN sorts first, as torch.sort does.
    order = descending_score_order(
        torch.where(valid, scores, torch.full_like(scores, float("-inf"))), dim=1)
    if idxs is None:
        return order
    # By category, stably, so each category stays in score order; the unused slots get
    # the largest key, and on a tie with a used slot the score order puts them after it.
    category = torch.where(valid.gather(1, order), idxs.gather(1, order),
                           torch.iinfo(torch.int64).max)
    return order.gather(1, torch.argsort(category, dim=1, stable=True))


def batched_nms_padded_launch(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                              iou_threshold: float, idxs: torch.Tensor | None
                              ) -> torch.Tensor:
    """The launcher of ``fcos_fast::batched_nms_padded_triton`` (traceable)."""
    boxes, scores, counts, idxs = contiguous(boxes, scores, counts, idxs)
    num_segments, length = scores.shape
    device = scores.device
    if num_segments == 0 or length == 0:
        return torch.zeros((num_segments, length), dtype=torch.bool, device=device)
    positions = num_segments * length
    used = counts.clamp(0, length)
    order = _sweep_order(scores, used, idxs)  # [S, L]

    # Packing: segment s's sorted used slots at sweep positions [begin[s], end[s]).
    end = torch.cumsum(used, 0)
    begin = end - used
    total = end[-1:]
    position = torch.arange(positions, device=device)
    # (Positions past the total belong to no segment: clamped to the last, never read.)
    segment = torch.searchsorted(end, position, right=True).clamp(max=num_segments - 1)
    rank = (position - begin[segment]).clamp(0, length - 1)
    slot = segment * length + order.reshape(-1)[segment * length + rank]  # flat [S * L] slot
    in_use = position < total

    # Groups: a segment's run of one category (each segment one group without idxs).
    first = in_use & (rank == 0)
    if idxs is not None:
        category = idxs.reshape(-1)[slot]
        first = first | (in_use & (category != category.roll(1)))
    group = torch.cumsum(first, 0) - 1
    # Group g starts at the first position with group[p] == g; past the last group (or if
    # there is none) the groups are empty at the total. Non-first positions go to a spare.
    group_start = total.expand(positions + 2).clone().scatter_reduce(
        0, torch.where(first, group, positions + 1), position, "amin")[:positions + 1]
    groups = nms.segments_from_start(group_start, (group[-1:] + 1).clamp(min=1))

    sorted_boxes = boxes.reshape(positions, 4).index_select(0, slot)
    words = triton.cdiv(length, _WORD)
    with device_guard(boxes):
        # Uninitialised: the sweep reads only the words the mask kernel writes.
        mask = torch.empty((positions * words,), dtype=torch.int64, device=device)
        config = mask_launch_config(num_segments, length)
        wrap_triton(_nms_mask_kernel)[config.grid](
            sorted_boxes, scalar_tensor(iou_threshold, boxes), groups.start, groups.tile_end,
            groups.mask_offset, groups.count, mask, **config.kwargs)
        # Every group has a box, so their words sum to at most S * L.
        removed = torch.zeros((positions,), dtype=torch.int64, device=device)
        kept = torch.zeros((positions,), dtype=torch.bool, device=device)
        config = sweep_launch_config(num_segments, length)
        wrap_triton(_nms_sweep_kernel)[config.grid](
            mask, groups.start, groups.mask_offset, groups.word_offset, groups.count, removed,
            kept, **config.kwargs)

    # Back to the slots: sorted rank r of segment s is sweep position begin[s] + r.
    ranks = torch.arange(length, device=device)
    kept_by_rank = kept[begin[:, None] + ranks] & (ranks < used[:, None])
    return torch.zeros_like(kept_by_rank).scatter(1, order, kept_by_rank)


@torch.library.triton_op("fcos_fast::batched_nms_padded_triton", mutates_args=())
def _batched_nms_padded_triton(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                               iou_threshold: float, idxs: torch.Tensor | None = None
                               ) -> torch.Tensor:
    return batched_nms_padded_launch(boxes, scores, counts, iou_threshold, idxs)


register(_batched_nms_padded_triton, batched_nms_padded_fake)


def batched_nms_padded(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                       iou_threshold: float, idxs: torch.Tensor | None = None) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.batched_nms_padded`` (validated inputs)."""
    return torch.ops.fcos_fast.batched_nms_padded_triton(boxes, scores, counts, iou_threshold,
                                                         idxs)
