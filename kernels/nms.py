"""Greedy NMS in Triton: ``fcos_fast::nms_triton`` and ``fcos_fast::batched_nms_triton``.

The boxes are sorted by score (a stable sort, so equal scores keep the lower index
first), then two kernels run, and nothing but the final indices leaves the device:

1. ``_nms_mask_kernel``: the suppression bitmask in 64 x 64 tiles. Bit ``j % 64`` of
   word ``mask[i, j // 64]`` says that box ``i`` would suppress box ``j > i`` (sorted
   positions): IoU above the threshold and, for ``batched_nms``, the same category.
   Tiles left of the diagonal are never read and never computed.
2. ``_nms_sweep_kernel``: one program walks the mask in sorted order, 64 boxes per
   step, keeping the "removed" bitset in registers. Within a step the greedy decision
   is sequential (a box can only be suppressed by a kept box), unless no box of the
   step suppresses another; the rows of the kept boxes are then OR-ed into the bitset
   as whole vectors.

The output size is known only after the sweep: the launcher's boolean indexing is the
one host-device synchronisation, at the very end. The IoU is computed as the reference
does, ``inter / (area_i + area_j - inter)`` in the boxes' dtype with IEEE rounding, so
that boxes planted exactly at the threshold go the same way on every backend; a NaN IoU
(two empty boxes) suppresses nothing, as in torchvision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fcos_fast.kernels._common import (NAN, div_rn, load_boxes, mul_rn, next_power_of_2,
                                       register, scalar_tensor)
from fcos_fast.ops.nms import batched_nms_fake, nms_fake

__all__ = ["nms", "batched_nms"]

_WORD = 64  # boxes per mask word (int64)


@triton.jit
def _nms_mask_kernel(boxes_ptr, categories_ptr, threshold_ptr, mask_ptr, num_boxes, num_words,
                     BATCHED: tl.constexpr, WORD: tl.constexpr):
    row_block = tl.program_id(0)
    word = tl.program_id(1)
    # The sweep reads, for a box of block w, the words from w on: skip the lower tiles.
    if word < row_block:
        return
    bit = tl.arange(0, WORD)
    rows = row_block * WORD + bit
    cols = word * WORD + bit
    row_ok = rows < num_boxes
    col_ok = cols < num_boxes
    rx1, ry1, rx2, ry2 = load_boxes(boxes_ptr, rows, row_ok)
    cx1, cy1, cx2, cy2 = load_boxes(boxes_ptr, cols, col_ok)
    row_area = mul_rn(rx2 - rx1, ry2 - ry1)
    col_area = mul_rn(cx2 - cx1, cy2 - cy1)

    width = tl.maximum(tl.minimum(rx2[:, None], cx2[None, :], NAN)
                       - tl.maximum(rx1[:, None], cx1[None, :], NAN), 0.0, NAN)
    height = tl.maximum(tl.minimum(ry2[:, None], cy2[None, :], NAN)
                        - tl.maximum(ry1[:, None], cy1[None, :], NAN), 0.0, NAN)
    inter = mul_rn(width, height)
    iou = div_rn(inter, row_area[:, None] + col_area[None, :] - inter)

    suppress = (iou > tl.load(threshold_ptr)) & (cols[None, :] > rows[:, None]) & col_ok[None, :]
    if BATCHED:
        row_cat = tl.load(categories_ptr + rows, mask=row_ok, other=0)
        col_cat = tl.load(categories_ptr + cols, mask=col_ok, other=0)
        suppress = suppress & (row_cat[:, None] == col_cat[None, :])
    # The bits are disjoint, so their sum is their OR (and tl.sum, unlike tl.reduce_or,
    # is one NumPy call in the interpreter).
    one = tl.full([1, WORD], 1, tl.int64)
    bits = tl.sum(tl.where(suppress, one << bit[None, :].to(tl.int64), 0), axis=1)
    tl.store(mask_ptr + rows.to(tl.int64) * num_words + word, bits, mask=row_ok)


@triton.jit
def _nms_sweep_kernel(mask_ptr, keep_ptr, num_boxes, num_words,
                      WORDS: tl.constexpr, WORD: tl.constexpr):
    words = tl.arange(0, WORDS)
    bit = tl.arange(0, WORD)
    one = tl.full([], 1, tl.int64)
    # removed[v]: boxes of block v suppressed by the kept boxes of the blocks before.
    removed = tl.zeros([WORDS], tl.int64)
    for w in range(0, num_words):
        current = tl.sum(tl.where(words == w, removed, 0))
        block = w * WORD + bit
        in_range = block < num_boxes
        present = tl.sum(tl.where(in_range, one << bit.to(tl.int64), 0))
        # The block's diagonal words: which of its boxes each would suppress.
        diagonal = tl.load(mask_ptr + block.to(tl.int64) * num_words + w, mask=in_range,
                           other=0)
        if tl.max(diagonal) == 0 and tl.min(diagonal) == 0:
            # No box of the block suppresses another: all those not removed are kept.
            kept = present & ~current
        else:
            # Greedy, box by box. The vector load above brought the words on chip; the
            # scalar loads here hit L1 and do not wait on the decisions.
            kept = tl.zeros([], tl.int64)
            for b in tl.static_range(WORD):
                i = w * WORD + b
                word = tl.load(mask_ptr + tl.cast(i, tl.int64) * num_words + w,
                               mask=i < num_boxes, other=0)
                keep_i = (i < num_boxes) & (((current >> b) & 1) == 0)
                current = tl.where(keep_i, current | word, current)
                kept = tl.where(keep_i, kept | (one << b), kept)
        tl.store(keep_ptr + block, ((kept >> bit.to(tl.int64)) & 1) != 0, mask=in_range)
        # The kept boxes' rows, from the next word on, join the removed set: 8 rows at a
        # time, so that 8 loads are in flight (unrolling all 64 spills registers).
        later = (words > w) & (words < num_words)
        for first in range(0, WORD, 8):
            for step in tl.static_range(8):
                r = first + step
                row = tl.load(mask_ptr + tl.cast(w * WORD + r, tl.int64) * num_words + words,
                              mask=later & (((kept >> r) & 1) != 0), other=0)
                removed = removed | row


def _sweep_warps(num_words: int) -> int:
    """Warps of the single sweep program: about 4 words of the removed set per thread.

    The sweep is latency-bound: per 64 boxes it extracts one word of the removed set (a
    reduction across the program) and ORs up to 64 rows of ``num_words`` words into it,
    8 row loads in flight. More warps shorten the row ORs but make every reduction
    dearer, so they grow only with the rows: 1 warp up to 128 words (8192 boxes), 8 at
    1024 words; 4 words per thread and 8 loads in flight stay within ~80-160 registers
    for sm_90 (ptxas -v) without spills, up to 2048 words (131k boxes, a 2 GB mask).
    """
    return min(32, max(1, num_words // 128))


def nms_keep_mask(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor | None,
                  iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, keep)``: the boxes by decreasing score and whether each is kept.

    Everything but the final compaction, with no host-device synchronisation (a
    fixed-size result, e.g. for CUDA-graph capture): ``nms`` is ``order[keep]``.
    ``boxes`` must be non-empty.
    """
    num_boxes = boxes.shape[0]
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes.index_select(0, order)
    batched = categories is not None
    sorted_categories = categories.index_select(0, order) if batched else order
    num_words = triton.cdiv(num_boxes, _WORD)
    mask = torch.empty((num_boxes, num_words), dtype=torch.int64, device=boxes.device)
    # 64 x 64 tiles, one int64 word per row as in torchvision's CUDA kernel: the tile is
    # the word, not a tunable. 8 warps give 16 pairs per thread (~80 registers for sm_90
    # by ptxas -v; 4 warps need ~170 and halve the occupancy).
    wrap_triton(_nms_mask_kernel)[(num_words, num_words)](
        sorted_boxes, sorted_categories, scalar_tensor(iou_threshold, boxes), mask,
        num_boxes, num_words, BATCHED=batched, WORD=_WORD, num_warps=8)
    keep = torch.empty((num_boxes,), dtype=torch.bool, device=boxes.device)
    wrap_triton(_nms_sweep_kernel)[(1,)](
        mask, keep, num_boxes, num_words, WORDS=next_power_of_2(num_words), WORD=_WORD,
        num_warps=_sweep_warps(num_words))
    return order, keep


def _nms(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor | None,
         iou_threshold: float) -> torch.Tensor:
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order, keep = nms_keep_mask(boxes, scores, categories, iou_threshold)
    return order[keep]  # the one synchronisation: the number of kept boxes


@torch.library.triton_op("fcos_fast::nms_triton", mutates_args=())
def _nms_triton(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    return _nms(boxes, scores, None, iou_threshold)


@torch.library.triton_op("fcos_fast::batched_nms_triton", mutates_args=())
def _batched_nms_triton(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    return _nms(boxes, scores, idxs, iou_threshold)


register(_nms_triton, nms_fake)
register(_batched_nms_triton, batched_nms_fake)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.nms`` (validated inputs)."""
    return torch.ops.fcos_fast.nms_triton(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """The ``triton`` backend of ``fcos_fast.ops.batched_nms`` (validated inputs)."""
    return torch.ops.fcos_fast.batched_nms_triton(boxes, scores, idxs, iou_threshold)
