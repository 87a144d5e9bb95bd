"""Per-class threshold and top-k in Triton: ``fcos_fast::per_class_topk_triton``.

A program per (class, segment of points) streams its part of the class's column of
scores in chunks of ``BLOCK`` points and keeps the best ``BLOCK >= k`` candidates so far,
sorted, in registers:

* every (score, point) pair becomes a key pair ordered by score descending, then point
  index ascending, the order of the output (non-candidates, ``score <= thresh`` or NaN,
  get a sentinel that sorts last);
* a chunk that has a candidate better than the worst one kept is sorted (a bitonic
  network) and merged: the best ``BLOCK`` of two sorted lists is the element-wise better
  of one list and the other reversed, which is a bitonic sequence, so one bitonic merge
  sorts it. Chunks with nothing better (most of them, once the top-k is full or when few
  scores pass the threshold) cost one load and one comparison.

A second kernel, a program per class, merges the segments' lists the same way and
writes the first ``min(k, N)`` to a ``[C, min(k, N)]`` table, ``-1`` where there was no
candidate; the launcher compacts the table, which is the one host-device
synchronisation (the output size depends on the data).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcos_fast.kernels._common import (LaunchConfig, checked_grid, contiguous, device_guard,
                                       next_power_of_2, register, scalar_tensor, wrap_triton)
from fcos_fast.ops.per_class_topk import per_class_topk_fake

__all__ = ["per_class_topk"]

_NO_INDEX = tl.constexpr(2**31 - 1)  # the index of the sentinel: no point has it
_MAX_POINTS = 2**31 - 2  # point indices are int32, and the sentinel's is not a point's


@triton.jit
def _sortable_key(score):
    """An integer with the order of ``score`` (``-0.0`` equal to ``0.0``, as torch.sort).

    Flipping the magnitude bits of negative floats makes the two's-complement order of
    the bit patterns the numeric order.
    """
    score = tl.where(score == 0, 0.0, score)
    if score.dtype == tl.float64:
        bits = score.to(tl.int64, bitcast=True)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    else:
        bits = score.to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _indicator(N_DIMS: tl.constexpr, dim: tl.constexpr):
    """0/1 along hypercube dimension ``dim`` (counted from the innermost)."""
    return tl.reshape(tl.arange(0, 2), [1] * (N_DIMS - dim - 1) + [2] + [1] * dim)


@triton.jit
def _better(key_a, idx_a, key_b, idx_b):
    """Whether (key_a, idx_a) comes first: higher key, or equal key and lower index."""
    return (key_a > key_b) | ((key_a == key_b) & (idx_a < idx_b))


@triton.jit
def _compare_and_swap(key, idx, flip, dim: tl.constexpr, N_DIMS: tl.constexpr):
    """One step of a bitonic network on ``[2] * N_DIMS`` hypercubes of (key, index).

    The partner of each element along ``dim`` is ``sum(pair) - x`` (exact: integer
    arithmetic wraps), the trick of ``tl.sort`` extended to carry the index with the key.
    ``tl.sort`` uses ``xor_sum``, equally fast on a GPU, but the interpreter runs
    ``xor_sum`` element by element in Python and ``sum`` as one NumPy call.
    """
    key_p = tl.sum(key, N_DIMS - 1 - dim, keep_dims=True) - key
    idx_p = tl.sum(idx, N_DIMS - 1 - dim, keep_dims=True) - idx
    swap = _better(key, idx, key_p, idx_p) != (flip ^ _indicator(N_DIMS, dim))
    return tl.where(swap, key_p, key), tl.where(swap, idx_p, idx)


@triton.jit
def _bitonic_merge(key, idx, stage: tl.constexpr, order: tl.constexpr, N_DIMS: tl.constexpr):
    """Sort bitonic runs of ``2**stage``: ``order`` 0 best-last, 1 best-first, 2 alternating."""
    if order == 2:
        flip = _indicator(N_DIMS, stage)
    else:
        flip = order
    for i in tl.static_range(stage):
        key, idx = _compare_and_swap(key, idx, flip, stage - 1 - i, N_DIMS)
    return key, idx


@triton.jit
def _merge_lists(best_key, best_idx, key, idx, LOG_BLOCK: tl.constexpr):
    """The best ``BLOCK`` of two lists, ``best`` sorted best-first and ``key, idx``
    worst-first: position by position the better of each pair is the best of both, as
    a bitonic sequence, which one bitonic merge sorts best-first."""
    take_kept = _better(best_key, best_idx, key, idx)
    best_key = tl.where(take_kept, best_key, key)
    best_idx = tl.where(take_kept, best_idx, idx)
    return _bitonic_merge(best_key, best_idx, LOG_BLOCK, 1, LOG_BLOCK)


@triton.jit
def _segment_top_kernel(scores_ptr, threshold_ptr, top_key_ptr, top_idx_ptr,
                        num_points, num_classes, segment_len,
                        BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr):
    """The best ``BLOCK`` candidates of one class among the points of one segment, best
    first, into ``top_key/top_idx[class, segment]``. Program ``class * S + segment`` (one
    grid axis: axis 1 holds at most 65,535 programs, too few segments for ~67M points)."""
    num_segments = tl.num_programs(0) // num_classes
    cls = tl.program_id(0) // num_segments
    segment = tl.program_id(0) - cls * num_segments
    threshold = tl.load(threshold_ptr)
    pos = tl.arange(0, BLOCK)
    # The sentinel, the smallest key (INT_MIN of the key's width) with the largest
    # index, sorts after every candidate: a candidate's key is at least that of -inf.
    key_dtype: tl.constexpr = top_key_ptr.dtype.element_ty
    no_key = tl.full([BLOCK], 1, key_dtype) << (key_dtype.primitive_bitwidth - 1)
    no_idx = tl.full([BLOCK], _NO_INDEX, tl.int32)
    best_key = tl.reshape(no_key, [2] * LOG_BLOCK)
    best_idx = tl.reshape(no_idx, [2] * LOG_BLOCK)
    worst_kept = tl.min(no_key)

    first = segment * segment_len
    stop = tl.minimum(first + segment_len, num_points)
    for start in range(first, stop, BLOCK):
        point = start + pos
        ok = point < stop
        score = tl.load(scores_ptr + point.to(tl.int64) * num_classes + cls, mask=ok, other=0.0)
        is_candidate = ok & (score > threshold)
        key = tl.where(is_candidate, _sortable_key(score), no_key)
        # Later chunks hold higher indices: on an equal key the kept pair wins, so only a
        # strictly higher key can enter.
        if tl.max(key) > worst_kept:
            chunk_key = tl.reshape(key, [2] * LOG_BLOCK)
            chunk_idx = tl.reshape(tl.where(is_candidate, point, no_idx), [2] * LOG_BLOCK)
            # Sort the chunk worst-first (the last stage ascending), then merge.
            for stage in tl.static_range(1, LOG_BLOCK + 1):
                chunk_key, chunk_idx = _bitonic_merge(
                    chunk_key, chunk_idx, stage, 2 if stage < LOG_BLOCK else 0, LOG_BLOCK)
            best_key, best_idx = _merge_lists(best_key, best_idx, chunk_key, chunk_idx,
                                              LOG_BLOCK)
            worst_kept = tl.min(best_key)

    out = tl.program_id(0).to(tl.int64) * BLOCK + pos
    tl.store(top_key_ptr + out, tl.reshape(best_key, [BLOCK]))
    tl.store(top_idx_ptr + out, tl.reshape(best_idx, [BLOCK]))


@triton.jit
def _merge_segments_kernel(top_key_ptr, top_idx_ptr, scores_ptr, out_idx_ptr, out_scores_ptr,
                           num_segments, num_classes, k_out,
                           BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr):
    """Merge the segments' lists of class ``program_id(0)`` and write its row of the
    ``[C, k_out]`` table: point index (``-1`` for no candidate) and score."""
    cls = tl.program_id(0)
    pos = tl.arange(0, BLOCK)
    lists = cls.to(tl.int64) * num_segments * BLOCK
    best_key = tl.reshape(tl.load(top_key_ptr + lists + pos), [2] * LOG_BLOCK)
    best_idx = tl.reshape(tl.load(top_idx_ptr + lists + pos), [2] * LOG_BLOCK)
    for segment in range(1, num_segments):
        at = lists + segment * BLOCK + (BLOCK - 1 - pos)  # back to front: worst-first
        best_key, best_idx = _merge_lists(
            best_key, best_idx, tl.reshape(tl.load(top_key_ptr + at), [2] * LOG_BLOCK),
            tl.reshape(tl.load(top_idx_ptr + at), [2] * LOG_BLOCK), LOG_BLOCK)

    idx = tl.reshape(best_idx, [BLOCK])
    store = pos < k_out
    found = store & (idx != _NO_INDEX)
    score = tl.load(scores_ptr + idx.to(tl.int64) * num_classes + cls, mask=found, other=0.0)
    out = cls.to(tl.int64) * k_out + pos
    tl.store(out_idx_ptr + out, tl.where(found, idx.to(tl.int64), -1), mask=store)
    tl.store(out_scores_ptr + out, score, mask=store)


# Launch configuration. The running top list needs BLOCK >= min(k, N) (FCOS keeps
# k = 1000 candidates per class: BLOCK 1024, ~12 KB of keys and indices per program).
# Below that, chunks of 256 keep the bitonic sort short. The network's cross-lane
# exchanges favour few warps: 4 warps up to 1024 elements (8 pairs per thread, ~100
# registers for sm_90 by ptxas -v), 8 beyond (~200 registers at 4096, no spills); float64
# below.
# Beyond 4096 the register-resident list would spill, so a larger k takes the
# reference's algorithm, one sort of all classes at once.
# A class's column is split into segments of 4 chunks, one program each, so that the
# GPU is filled even with few classes (FCOS, k = 1000, 20k points, 80 classes: 5
# segments per class, 400 programs), at the price of one bitonic merge per extra
# segment in the second kernel (log2(BLOCK) steps, against ~4 sorts of a chunk).
_MIN_BLOCK = 256
_MAX_BLOCK = 4096
_CHUNKS_PER_SEGMENT = 4


def list_block(num_points: int, k: int) -> int | None:
    """``BLOCK``, the length of the running top list, or ``None`` when ``k`` is too large
    for it and the launcher takes the sort path. ``num_points, k > 0``."""
    block = max(next_power_of_2(min(k, num_points)), min(_MIN_BLOCK, next_power_of_2(num_points)),
                2)
    return block if block <= _MAX_BLOCK else None


# float64 scores have int64 keys: 3 registers an element instead of 2. ptxas then spills
# at 1024 elements on 4 warps and at 2048 on 8 (it settles for 128 registers), and at
# 4096 on 16 warps (128 at most), but not at 4096 on 8 (254 registers): measured, see
# benchmarks/results/triton_launch_configs.md.
_FLOAT64_WARPS = {1024: 8, 2048: 16, 4096: 8}


def _warps(block: int, dtype: torch.dtype) -> int:
    if dtype == torch.float64 and block in _FLOAT64_WARPS:
        return _FLOAT64_WARPS[block]
    return 4 if block <= 1024 else 8


def _max_registers(block: int, dtype: torch.dtype) -> int | None:
    """float64 at 4096 on 8 warps needs 254 registers; ptxas of Triton 3.6 stopped the
    merge kernel at 128 on sm_80 and spilled 32 bytes unless allowed more."""
    return 255 if dtype == torch.float64 and block == _MAX_BLOCK else None


def num_segments(num_points: int, block: int) -> int:
    """Segments of ``4 * BLOCK`` points a class's column is split into."""
    return triton.cdiv(num_points, _CHUNKS_PER_SEGMENT * block)


def segment_launch_config(num_points: int, num_classes: int, block: int,
                          dtype: torch.dtype) -> LaunchConfig:
    """``_segment_top_kernel``: a program per (class, segment of ``4 * BLOCK`` points)."""
    sizes = f"{num_points} points x {num_classes} classes"
    if num_points > _MAX_POINTS:
        from fcos_fast.ops import InputError

        raise InputError(f"per_class_topk on the triton backend: {sizes}; it indexes points "
                         f"in int32, at most {_MAX_POINTS}; use backend='native'")
    grid = checked_grid((num_classes * num_segments(num_points, block),), "per_class_topk",
                        sizes)
    return LaunchConfig(grid, _warps(block, dtype),
                        {"BLOCK": block, "LOG_BLOCK": block.bit_length() - 1},
                        _max_registers(block, dtype))


def merge_launch_config(num_classes: int, block: int, dtype: torch.dtype) -> LaunchConfig:
    """``_merge_segments_kernel``: a program per class."""
    return LaunchConfig((num_classes,), _warps(block, dtype),
                        {"BLOCK": block, "LOG_BLOCK": block.bit_length() - 1},
                        _max_registers(block, dtype))


def per_class_topk_table(scores: torch.Tensor, k: int, score_thresh: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, point_idx)`` tables ``[C, min(k, N)]``, each row best first, index
    ``-1`` past the last candidate. No host-device synchronisation (a fixed-size result,
    e.g. for CUDA-graph capture); ``per_class_topk`` compacts it. ``N, C, k > 0``.
    """
    scores, = contiguous(scores)
    num_points, num_classes = scores.shape
    k_out = min(k, num_points)
    block = list_block(num_points, k)
    if block is None:
        # Every class at once by one stable sort (the reference's algorithm).
        candidates = torch.where(scores > score_thresh, scores,
                                 torch.full_like(scores, float("-inf")))
        top, point_idx = torch.sort(candidates.t(), dim=1, descending=True, stable=True)
        top, point_idx = top[:, :k_out], point_idx[:, :k_out]
        return top, torch.where(top > score_thresh, point_idx, -1)
    with device_guard(scores):
        config = segment_launch_config(num_points, num_classes, block, scores.dtype)
        segments = num_segments(num_points, block)
        key_dtype = torch.int64 if scores.dtype == torch.float64 else torch.int32
        top_key = torch.empty((num_classes, segments, block), dtype=key_dtype,
                              device=scores.device)
        top_idx = torch.empty((num_classes, segments, block), dtype=torch.int32,
                              device=scores.device)
        wrap_triton(_segment_top_kernel)[config.grid](
            scores, scalar_tensor(score_thresh, scores), top_key, top_idx, num_points,
            num_classes, _CHUNKS_PER_SEGMENT * block, **config.kwargs)
        out_idx = torch.empty((num_classes, k_out), dtype=torch.int64, device=scores.device)
        out_scores = scores.new_empty((num_classes, k_out))
        config = merge_launch_config(num_classes, block, scores.dtype)
        wrap_triton(_merge_segments_kernel)[config.grid](
            top_key, top_idx, scores, out_idx, out_scores, segments, num_classes, k_out,
            **config.kwargs)
    return out_scores, out_idx


def per_class_topk_launch(scores: torch.Tensor, k: int, score_thresh: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The launcher of ``fcos_fast::per_class_topk_triton`` (traceable)."""
    num_points, num_classes = scores.shape
    k_out = min(k, num_points)
    if k_out == 0 or num_classes == 0:
        empty = torch.empty((0,), dtype=torch.int64, device=scores.device)
        return scores.new_empty((0,)), empty, empty.clone()
    table_scores, table_idx = per_class_topk_table(scores, k, score_thresh)
    # Class-major, best first: the order of the table. The one sync sizes the output.
    found = torch.nonzero(table_idx.flatten() >= 0).flatten()
    return (table_scores.flatten()[found], table_idx.flatten()[found],
            torch.div(found, k_out, rounding_mode="floor"))


@torch.library.triton_op("fcos_fast::per_class_topk_triton", mutates_args=())
def _per_class_topk_triton(scores: torch.Tensor, k: int, score_thresh: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return per_class_topk_launch(scores, k, score_thresh)


register(_per_class_topk_triton, per_class_topk_fake)


def per_class_topk(scores: torch.Tensor, k: int, score_thresh: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``triton`` backend of ``fcos_fast.ops.per_class_topk`` (validated inputs)."""
    return torch.ops.fcos_fast.per_class_topk_triton(scores, k, score_thresh)
