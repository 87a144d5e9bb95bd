"""Greedy NMS in Triton: ``fcos_fast::nms_triton`` and ``fcos_fast::batched_nms_triton``.

The boxes are put in sweep order: by decreasing score (a stable sort, so equal scores
keep the lower index first), and for ``batched_nms`` then stably by category, which
makes each category one contiguous segment still in score order (as the CPU kernel
does). ``nms`` is one segment of all the boxes. Two kernels run:

1. ``_nms_mask_kernel``: per segment, the suppression bitmask in 64 x 64 tiles. Bit
   ``j % 64`` of word ``j // 64`` of row ``i`` says that box ``i`` would suppress box
   ``j > i`` (positions inside the segment): IoU above the threshold. A segment of
   ``L`` boxes has ``L`` rows of ``ceil(L / 64)`` words, so the mask holds
   ``sum(L_c * ceil(L_c / 64))`` words over the categories, never ``N * ceil(N / 64)``;
   only the tiles on and right of each segment's diagonal are computed. The tiles are
   numbered segment by segment and a fixed number of programs each take an equal run of
   them: the grid depends on ``N`` only, not on the data.
2. ``_nms_sweep_kernel``: a program per segment (a fixed grid walking the segments)
   sweeps its mask 64 boxes per step. The "removed" bitset of the segment lives in a
   scratch row in global memory (L1/L2-resident), so registers do not grow with the
   segment: within a step the greedy decision is sequential (a box can only be
   suppressed by a kept box) unless no box of the step suppresses another, and the rows
   of the kept boxes are then OR-ed into the bitset chunk by chunk.

Kept positions are mapped back to score ranks, and ``order[keep]`` is the result: by
decreasing score, ties to the lower index, the order ``torchvision.ops.batched_nms``
returns. Host-device synchronisations: the final compaction (the output size depends
on the data), and for ``batched_nms`` one more, the mask's allocation, whose size is a
device-side sum over the segments (``_common.empty_of_device_size``; traced, a
data-dependent size like ``nonzero``'s, so the launcher stays traceable). The IoU is
computed as the reference does, ``inter / (area_i + area_j - inter)`` in the boxes'
dtype with IEEE rounding, so that boxes planted exactly at the
threshold go the same way on every backend; a NaN IoU (two empty boxes) suppresses
nothing, as in torchvision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fcos_fast.kernels._common import (NAN, LaunchConfig, contiguous, descending_score_order,
                                       device_guard, div_rn, empty_of_device_size, load_boxes,
                                       mul_rn, next_power_of_2, register, scalar_tensor,
                                       wrap_triton)
from fcos_fast.ops.nms import batched_nms_fake, nms_fake

__all__ = ["nms", "batched_nms"]

_WORD = 64  # boxes per mask word (int64)


@triton.jit
def _segment_extent(seg_start_ptr, segment):
    """``(first position, number of boxes, words per mask row)`` of a segment."""
    first = tl.load(seg_start_ptr + segment)
    length = tl.load(seg_start_ptr + segment + 1) - first
    return first, length, (length + 63) // 64


@triton.jit
def _nms_mask_kernel(boxes_ptr, threshold_ptr, seg_start_ptr, seg_tile_end_ptr,
                     seg_mask_offset_ptr, num_segments_ptr, mask_ptr, WORD: tl.constexpr):
    # Segment c has words_c * (words_c + 1) / 2 tiles (row block b <= word w), numbered
    # segment by segment, row block by row block; tile_end is their running count.
    num_segments = tl.load(num_segments_ptr)
    total = tl.load(seg_tile_end_ptr + num_segments - 1)
    per_program = tl.cdiv(total, tl.num_programs(0))
    first_tile = tl.program_id(0).to(tl.int64) * per_program
    last_tile = tl.minimum(first_tile + per_program, total)
    # The segment of the first tile: the first c with tile_end[c] > first_tile.
    lo = tl.zeros([], tl.int64)
    hi = num_segments - 1
    while lo < hi:
        mid = (lo + hi) // 2
        right = tl.load(seg_tile_end_ptr + mid) <= first_tile
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    segment = lo
    start, length, words = _segment_extent(seg_start_ptr, segment)
    mask_base = tl.load(seg_mask_offset_ptr + segment)
    tile_base = tl.load(seg_tile_end_ptr + segment) - words * (words + 1) // 2
    # Its row block: the last b whose first tile, b * words - b * (b - 1) / 2, is <= u.
    u = first_tile - tile_base
    lo = tl.zeros([], tl.int64)
    hi = words - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        left = mid * words - mid * (mid - 1) // 2 <= u
        lo = tl.where(left, mid, lo)
        hi = tl.where(left, hi, mid - 1)
    block = lo
    word = block + u - (block * words - block * (block - 1) // 2)

    bit = tl.arange(0, WORD)
    one = tl.full([1, WORD], 1, tl.int64)
    for _ in range(first_tile, last_tile):
        local_rows = block * WORD + bit
        local_cols = word * WORD + bit
        row_ok = local_rows < length
        col_ok = local_cols < length
        rx1, ry1, rx2, ry2 = load_boxes(boxes_ptr, start + local_rows, row_ok)
        cx1, cy1, cx2, cy2 = load_boxes(boxes_ptr, start + local_cols, col_ok)
        row_area = mul_rn(rx2 - rx1, ry2 - ry1)
        col_area = mul_rn(cx2 - cx1, cy2 - cy1)
        width = tl.maximum(tl.minimum(rx2[:, None], cx2[None, :], NAN)
                           - tl.maximum(rx1[:, None], cx1[None, :], NAN), 0.0, NAN)
        height = tl.maximum(tl.minimum(ry2[:, None], cy2[None, :], NAN)
                            - tl.maximum(ry1[:, None], cy1[None, :], NAN), 0.0, NAN)
        inter = mul_rn(width, height)
        iou = div_rn(inter, row_area[:, None] + col_area[None, :] - inter)
        suppress = ((iou > tl.load(threshold_ptr)) & (local_cols[None, :] > local_rows[:, None])
                    & col_ok[None, :])
        # The bits are disjoint, so their sum is their OR (and tl.sum, unlike
        # tl.reduce_or, is one NumPy call in the interpreter).
        bits = tl.sum(tl.where(suppress, one << bit[None, :].to(tl.int64), 0), axis=1)
        tl.store(mask_ptr + mask_base + local_rows * words + word, bits, mask=row_ok)
        # The next tile: the next word, else the next row block, else the next segment.
        word += 1
        if word == words:
            block += 1
            word = block
            if block == words:
                # (Clamped: past the last tile, the loop ends before reading anything.)
                segment = tl.minimum(segment + 1, num_segments - 1)
                start, length, words = _segment_extent(seg_start_ptr, segment)
                mask_base = tl.load(seg_mask_offset_ptr + segment)
                block = tl.zeros([], tl.int64)
                word = tl.zeros([], tl.int64)


@triton.jit
def _nms_sweep_kernel(mask_ptr, seg_start_ptr, seg_mask_offset_ptr, seg_word_offset_ptr,
                      num_segments_ptr, removed_ptr, keep_ptr,
                      WORD: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr):
    bit = tl.arange(0, WORD)
    chunk = tl.arange(0, CHUNK)
    one = tl.full([], 1, tl.int64)
    num_segments = tl.load(num_segments_ptr)
    for segment in range(tl.program_id(0).to(tl.int64), num_segments, tl.num_programs(0)):
        start, length, words = _segment_extent(seg_start_ptr, segment)
        rows_ptr = mask_ptr + tl.load(seg_mask_offset_ptr + segment)
        # removed[v]: boxes of block v suppressed by the kept boxes of the blocks before;
        # zero on entry, this segment's own words.
        removed = removed_ptr + tl.load(seg_word_offset_ptr + segment)
        for w in range(0, words):
            # The previous step's stores to `removed` are visible to every thread.
            tl.debug_barrier()
            current = tl.load(removed + w)
            local = w * WORD + bit
            in_segment = local < length
            count = tl.minimum(length - w * WORD, WORD)
            present = tl.where(count == WORD, -one, (one << tl.minimum(count, WORD - 1)) - 1)
            # The block's diagonal words: which of its boxes each would suppress.
            diagonal = tl.load(rows_ptr + local * words + w, mask=in_segment, other=0)
            if tl.max((diagonal != 0).to(tl.int32)) == 0:
                # No box of the block suppresses another: all those not removed are kept.
                kept = present & ~current
            else:
                # Greedy, box by box; 8 scalar loads (L1 hits, the vector load above
                # brought the words on chip) in flight ahead of the decisions.
                kept = tl.zeros([], tl.int64)
                for first in range(0, WORD, 8):
                    for step in tl.static_range(8):
                        b = first + step
                        i = w * WORD + b
                        row_word = tl.load(rows_ptr + i * words + w, mask=i < length, other=0)
                        keep_b = (i < length) & (((current >> b) & 1) == 0)
                        current = tl.where(keep_b, current | row_word, current)
                        kept = tl.where(keep_b, kept | (one << b), kept)
            tl.store(keep_ptr + start + local, ((kept >> bit.to(tl.int64)) & 1) != 0,
                     mask=in_segment)
            if kept != 0:
                # The kept boxes' rows, from the next word on, join the removed set:
                # CHUNK words at a time, ROWS row loads in flight.
                for first_word in range(w + 1, words, CHUNK):
                    cols = first_word + chunk
                    cols_ok = cols < words
                    acc = tl.load(removed + cols, mask=cols_ok, other=0)
                    for first in range(0, WORD, ROWS):
                        for step in tl.static_range(ROWS):
                            r = first + step
                            acc |= tl.load(rows_ptr + (w * WORD + r) * words + cols,
                                           mask=cols_ok & (((kept >> r) & 1) != 0), other=0)
                    tl.store(removed + cols, acc, mask=cols_ok)


# Launch configuration.
#
# Mask: 64 x 64 tiles, one int64 word per row as in torchvision's CUDA kernel: the tile
# is the word, not a tunable. 8 warps give 16 pairs per thread (~80 registers for sm_90
# by ptxas -v; 4 warps need ~170 and halve the occupancy). Up to 4096 programs, each an
# equal run of tiles: a few waves on a large GPU, a tile or less each for small inputs.
_MASK_WARPS = 8
_MAX_MASK_PROGRAMS = 4096
# Sweep: latency-bound, per 64 boxes one removed word, maybe a greedy walk, then up to 64
# rows OR-ed in. More warps shorten the row ORs over long segments (CHUNK = 4 words per
# thread), up to 8: 8 rows in flight then take ~170 registers for sm_90 (ptxas -v), and
# 16 warps (128 registers at most) would have to halve the rows in flight, for the same
# loads in flight. benchmarks/results/triton_launch_configs.md has every configuration.
# batched_nms walks the segments with up to 1024 programs.
_MAX_SWEEP_WARPS = 8
_SWEEP_ROWS = 8
# The rows in flight need ~140 registers at 2 and 4 warps, where ptxas stops at 128 unless
# told otherwise: Triton 3.6's code then spilled 24-28 bytes on sm_80 (3.8's did not).
# Occupancy does not matter to this kernel, a few programs long in latency.
_SWEEP_MAX_REGISTERS = 255
_MAX_SWEEP_PROGRAMS = 1024


def mask_launch_config(num_boxes: int, batched: bool) -> LaunchConfig:
    """``_nms_mask_kernel`` for ``num_boxes > 0`` boxes: programs for the tiles of one
    segment (``nms``) or at most one per box (``batched_nms``; the tile count is data)."""
    num_words = triton.cdiv(num_boxes, _WORD)
    most_tiles = num_boxes if batched else num_words * (num_words + 1) // 2
    return LaunchConfig((min(most_tiles, _MAX_MASK_PROGRAMS),), _MASK_WARPS, {"WORD": _WORD})


def sweep_launch_config(num_boxes: int, batched: bool) -> LaunchConfig:
    """``_nms_sweep_kernel`` for ``num_boxes > 0`` boxes: warps for the longest possible
    segment (1 up to 128 words, 8192 boxes, doubling with the words up to 8 from 513
    words, 32,769 boxes), one program per segment."""
    num_words = triton.cdiv(num_boxes, _WORD)
    num_warps = min(_MAX_SWEEP_WARPS, max(1, next_power_of_2(num_words) // 128))
    programs = min(num_boxes, _MAX_SWEEP_PROGRAMS) if batched else 1
    return LaunchConfig((programs,), num_warps,
                        {"WORD": _WORD, "CHUNK": 128 * num_warps, "ROWS": _SWEEP_ROWS},
                        max_registers=_SWEEP_MAX_REGISTERS)


class Segments(NamedTuple):
    """Sweep positions grouped into segments (categories), as device tensors, int64."""

    start: torch.Tensor        # [S + 1]: first position of each segment, N past the last
    mask_offset: torch.Tensor  # [S]: first mask word of each segment
    word_offset: torch.Tensor  # [S]: first word of each segment's removed set
    tile_end: torch.Tensor     # [S]: running count of the mask tiles
    count: torch.Tensor        # [1]: number of segments
    mask_words: torch.Tensor   # [S]: words of each segment's mask, L * ceil(L / 64)


def _one_segment(num_boxes: int, device: torch.device) -> Segments:
    """All the boxes, one segment: sizes known on the host, fill kernels, no copies."""
    words = triton.cdiv(num_boxes, _WORD)
    zero = torch.zeros((1,), dtype=torch.int64, device=device)
    return Segments(start=torch.arange(2, dtype=torch.int64, device=device) * num_boxes,
                    mask_offset=zero, word_offset=zero,
                    tile_end=torch.full((1,), words * (words + 1) // 2, dtype=torch.int64,
                                        device=device),
                    count=torch.ones((1,), dtype=torch.int64, device=device),
                    mask_words=torch.full((1,), num_boxes * words, dtype=torch.int64,
                                          device=device))


def _category_segments(sorted_categories: torch.Tensor) -> Segments:
    """The segments of equal categories in a sorted ``[N]`` tensor, computed on the
    device; segment slots past the last one are empty (start N, no words, no tiles)."""
    num_boxes = sorted_categories.shape[0]
    is_first = torch.ones((num_boxes,), dtype=torch.bool, device=sorted_categories.device)
    is_first[1:] = sorted_categories[1:] != sorted_categories[:-1]
    segment_of = torch.cumsum(is_first, 0) - 1
    positions = torch.arange(num_boxes, dtype=torch.int64, device=sorted_categories.device)
    start = torch.full((num_boxes + 1,), num_boxes, dtype=torch.int64,
                       device=sorted_categories.device)
    start = start.scatter_reduce(0, segment_of, positions, "amin")
    return segments_from_start(start, segment_of[-1:] + 1)


def segments_from_start(start: torch.Tensor, count: torch.Tensor) -> Segments:
    """The ``Segments`` whose segment ``c`` is sweep positions ``[start[c], start[c + 1])``,
    ``count`` (``[1]``, at least 1) of them; the slots past the last one repeat its end
    (empty segments). Everything is computed on the device."""
    length = start[1:] - start[:-1]
    words = torch.div(length + (_WORD - 1), _WORD, rounding_mode="floor")
    mask_words = length * words
    return Segments(start=start, mask_offset=torch.cumsum(mask_words, 0) - mask_words,
                    word_offset=torch.cumsum(words, 0) - words,
                    tile_end=torch.cumsum(torch.div(words * (words + 1), 2,
                                                    rounding_mode="floor"), 0),
                    count=count, mask_words=mask_words)


class SweepPlan(NamedTuple):
    """Everything the two kernels work on, for ``num_boxes > 0`` boxes."""

    order: torch.Tensor          # [N] box of each score rank (decreasing score, stable)
    rank_of: torch.Tensor | None  # [N] score rank of each sweep position (batched only)
    sorted_boxes: torch.Tensor   # [N, 4] boxes in sweep order
    segments: Segments
    mask: torch.Tensor           # [sum of L * ceil(L / 64)] int64, written by the mask kernel
    removed: torch.Tensor        # [>= sum of ceil(L / 64)] int64 zeros, the sweep's scratch


def sweep_plan(boxes: torch.Tensor, scores: torch.Tensor,
               categories: torch.Tensor | None) -> SweepPlan:
    """Sort, find the segments and allocate the mask (one sync when ``categories``)."""
    num_boxes = boxes.shape[0]
    order = descending_score_order(scores)
    if categories is None:
        rank_of = None
        segments = _one_segment(num_boxes, boxes.device)
        mask = boxes.new_empty((num_boxes * triton.cdiv(num_boxes, _WORD),), dtype=torch.int64)
        removed = boxes.new_zeros((triton.cdiv(num_boxes, _WORD),), dtype=torch.int64)
        sweep_boxes = order
    else:
        sorted_categories, rank_of = torch.sort(categories.index_select(0, order), stable=True)
        sweep_boxes = order.index_select(0, rank_of)
        segments = _category_segments(sorted_categories)
        # sum(mask_words) words: the one synchronisation (or, traced, a dynamic size).
        mask = empty_of_device_size(segments.mask_words.sum())
        removed = boxes.new_zeros((num_boxes,), dtype=torch.int64)  # sum of words <= N
    return SweepPlan(order, rank_of, boxes.index_select(0, sweep_boxes), segments, mask,
                     removed)


def nms_keep_mask(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor | None,
                  iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, keep)``: the boxes by decreasing score and whether each is kept.

    Everything but the final compaction: ``nms`` is ``order[keep]``. With no
    ``categories`` there is no host-device synchronisation (a fixed-size result, e.g.
    for CUDA-graph capture); with them, the mask allocation is one. ``boxes`` must be
    non-empty.
    """
    num_boxes = boxes.shape[0]
    batched = categories is not None
    with device_guard(boxes):
        plan = sweep_plan(boxes, scores, categories)
        segments = plan.segments
        config = mask_launch_config(num_boxes, batched)
        wrap_triton(_nms_mask_kernel)[config.grid](
            plan.sorted_boxes, scalar_tensor(iou_threshold, boxes), segments.start,
            segments.tile_end, segments.mask_offset, segments.count, plan.mask,
            **config.kwargs)
        keep = torch.empty((num_boxes,), dtype=torch.bool, device=boxes.device)
        config = sweep_launch_config(num_boxes, batched)
        wrap_triton(_nms_sweep_kernel)[config.grid](
            plan.mask, segments.start, segments.mask_offset, segments.word_offset,
            segments.count, plan.removed, keep, **config.kwargs)
    if plan.rank_of is None:
        return plan.order, keep
    # Sweep positions back to score ranks: the kept boxes in the global score order are
    # the merge torchvision's batched_nms returns.
    keep_by_rank = torch.empty_like(keep)
    keep_by_rank[plan.rank_of] = keep
    return plan.order, keep_by_rank


def nms_launch(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor | None,
               iou_threshold: float) -> torch.Tensor:
    """The launcher of both ops (traceable)."""
    boxes, scores, categories = contiguous(boxes, scores, categories)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order, keep = nms_keep_mask(boxes, scores, categories, iou_threshold)
    return order[keep]  # a synchronisation: the number of kept boxes


@torch.library.triton_op("fcos_fast::nms_triton", mutates_args=())
def _nms_triton(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    return nms_launch(boxes, scores, None, iou_threshold)


@torch.library.triton_op("fcos_fast::batched_nms_triton", mutates_args=())
def _batched_nms_triton(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    return nms_launch(boxes, scores, idxs, iou_threshold)


register(_nms_triton, nms_fake)
register(_batched_nms_triton, batched_nms_fake)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.nms`` (validated inputs)."""
    return torch.ops.fcos_fast.nms_triton(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.batched_nms`` (validated inputs)."""
    return torch.ops.fcos_fast.batched_nms_triton(boxes, scores, idxs, iou_threshold)
