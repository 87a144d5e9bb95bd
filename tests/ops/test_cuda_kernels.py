"""The native CUDA kernels (csrc/ops/cuda) at full FCOS size, against the reference.

Marked ``cuda``: on a GPU machine they run against CUDA tensors; elsewhere the same
bodies run on the CPU (the ``gpu`` fixture of tests/gpu.py: the rehearsal of the GPU
check, at smaller sizes where the oracle is slow), with what needs CUDA itself (sync
debug mode, memory snapshots, graph capture) skipped by name. With a GPU visible, a
build without CUDA kernels fails every one of them: a GPU run must not pass with nothing
tested.

Oracles are independent of the kernels: the reference (pure PyTorch, run on the test's
device, in the inputs' dtype, so that its IEEE arithmetic decides ties at the NMS
threshold as the kernels must) or torchvision. Not the native CPU kernels, which share
box_math.h, score_key.h and nms_layout.h with the CUDA ones. Batched NMS over thousands
of categories is checked category by category against the reference on a sample of
categories, and its order (score, then index) as a whole. The CUDA kernels are built
without FMA contraction, so assignments, per-pair losses, kept indices and top-k are
compared for equality; gradients and reduced losses within a few ulps. fcos_assign and
giou_loss must not synchronise with the host. The layout of the class-aware NMS mask
(``fcos_fast::_nms_segment_layout``, device-generic) is also checked on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from benchmarks.cases import (clustered_boxes, fcos_points, padded_gt, postprocess_candidates,
                              random_boxes)
from fcos_fast import _extension, ops
from fcos_fast.ops._dispatch import OP_NAMES
from fcos_fast.ops.reference import batched_nms_padded as ref_padded
from fcos_fast.ops.reference import fcos_assign as ref_assign
from fcos_fast.ops.reference import giou_loss as ref_giou
from fcos_fast.ops.reference import nms as ref_nms
from fcos_fast.ops.reference import per_class_topk as ref_topk
from fcos_fast.ops.reference import per_class_topk_padded as ref_topk_padded

C = torch.ops.fcos_fast
DTYPES = [torch.float32, torch.float64]
cuda = pytest.mark.cuda


def _missing_kernels(device_type: str) -> list[str]:
    return [op for op in OP_NAMES if not _extension.native_has_kernel(op, device_type)]


@pytest.fixture(autouse=True)
def _cuda_kernels_built(request):
    """With a GPU visible, a build without CUDA kernels fails (never skips) the GPU tests."""
    if request.node.get_closest_marker("cuda") is None or not torch.cuda.is_available():
        return
    missing = _missing_kernels("cuda")
    if missing:
        pytest.fail(f"a GPU is visible but fcos_fast._C has no CUDA kernel for {missing} "
                    f"({_extension.NATIVE_ERROR or 'built without nvcc or FCOS_FAST_NO_CUDA=1'}):"
                    " rebuild with `pip install --no-build-isolation -e .` where nvcc is on PATH")


@cuda
def test_every_op_has_a_native_kernel(gpu):
    assert _missing_kernels(gpu.device.type) == []
    assert "native" in ops.available_backends(gpu.device)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _assert_batched_nms_is_the_reference(keep, boxes, scores, idxs, threshold, *,
                                         sample: int | None = None, seed: int = 0):
    """``keep`` of a batched NMS against the reference, on the device of the inputs: by
    decreasing score, equal scores by index; in each category (all, or ``sample`` random
    ones) exactly the boxes the reference NMS keeps there, in its order."""
    keep = keep.cpu()
    # NaN first whatever its sign, as torch.sort on the CPU (CUDA's radix sort would rank a
    # sign-set NaN last: the reference gets positive NaNs on every device).
    scores = torch.where(scores.isnan(), scores.abs(), scores)
    cpu_scores = scores.cpu()
    by_index = torch.sort(keep).values
    by_index_then_score = by_index[torch.argsort(cpu_scores[by_index], descending=True,
                                                 stable=True)]
    assert torch.equal(keep, by_index_then_score)
    cpu_idxs = idxs.cpu()
    categories = torch.unique(cpu_idxs)
    if sample is not None and sample < categories.numel():
        categories = categories[torch.randperm(categories.numel(), generator=_gen(seed))[:sample]]
    in_sample = torch.isin(cpu_idxs, categories)
    kept_in_sample = keep[in_sample[keep]]
    members = torch.nonzero(in_sample).flatten()
    expected = members[ref_nms.batched_nms(boxes[members.to(boxes.device)],
                                           scores[members.to(boxes.device)],
                                           idxs[members.to(boxes.device)], threshold).cpu()]
    assert torch.equal(kept_in_sample, expected)


# ---------------------------------------------------------------- fcos_assign

def _assign_inputs(num_boxes, dtype, seed=0, batch=8):
    points, lower, upper, radius, _, _ = fcos_points((800, 1024), dtype=dtype)
    g = _gen(seed)
    boxes = [random_boxes(num_boxes, scale=800.0, min_size=8.0, dtype=dtype, generator=g)
             for _ in range(batch)]
    boxes[1] = (boxes[1] / 8).round() * 8  # sides on the point grid: edge and area ties
    gt, num_gt = padded_gt(boxes, slots=num_boxes + 5)
    num_gt[2] = 0
    return points, lower, upper, radius, gt.to(dtype), num_gt


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_boxes", [10, 200, 300])  # 300: more than one shared tile
def test_fcos_assign_full_size_equals_reference(gpu, dtype, num_boxes):
    args = gpu.to(*_assign_inputs(num_boxes, dtype))
    expected = ref_assign.fcos_assign(*args)
    with gpu.no_host_sync():
        got = C.fcos_assign(*args)
    assert torch.equal(got, expected)


@cuda
def test_fcos_assign_bad_counts_and_non_finite_values_are_safe(gpu):
    points, lower, upper, radius, gt, _ = _assign_inputs(20, torch.float32, batch=3)
    counts = torch.tensor([-4, 7, 10**9])
    points = points.clone()
    points[::91, 0] = float("nan")
    gt = gt.clone()
    gt[0, 1, 2] = float("inf")
    expected = ref_assign.fcos_assign(points, lower, upper, radius, gt,
                                      counts.clamp(0, gt.shape[1]))
    got = C.fcos_assign(*gpu.to(points, lower, upper, radius, gt, counts))
    assert torch.equal(got.cpu(), expected)


# ---------------------------------------------------------------- giou_loss

def _giou_pairs(n, dtype, seed=0, integral=False):
    g = _gen(seed)
    target = random_boxes(n, min_size=1.0, dtype=torch.float64, generator=g)
    pred = target + (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 40
    if integral:
        pred, target = pred.round(), target.round()
    pred[torch.rand(n, generator=g) < 0.2] += 500
    return pred.to(dtype), target.to(dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("integral", [False, True])
@pytest.mark.parametrize("misaligned", [False, True])  # float4 / double2 path or scalar path
def test_giou_loss_full_size_equals_reference(gpu, dtype, integral, misaligned):
    n = 100_000
    pred, target = _giou_pairs(n, dtype, integral=integral)
    pred_dev, target_dev = gpu.to(pred, target)
    if misaligned:  # contiguous, but one element off 16-byte alignment
        pred_dev = torch.empty(4 * n + 1, dtype=dtype, device=gpu.device)[1:].view(n, 4)
        pred_dev.copy_(pred)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    expected = ref_giou.giou_loss(pred, target, "none", 1e-7)
    with gpu.no_host_sync():
        got = C.giou_loss(pred_dev, target_dev, "none", 1e-7)
    assert torch.equal(got.cpu(), expected)
    for reduction in ("none", "mean", "sum"):
        upstream = torch.rand(n if reduction == "none" else (), generator=_gen(1), dtype=dtype)
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        reduced = ref_giou.giou_loss(p, t, reduction, 1e-7)
        (reduced * upstream).sum().backward()
        upstream_dev = gpu.to(upstream)  # a copy from the host syncs: outside the check
        with gpu.no_host_sync():
            loss = C.giou_loss(pred_dev, target_dev, reduction, 1e-7)
            grads = C.giou_loss_backward(upstream_dev, pred_dev, target_dev, reduction, 1e-7)
        torch.testing.assert_close(loss.cpu(), reduced.detach(), rtol=1e-5 if dtype ==
                                   torch.float32 else 1e-12, atol=0)
        for mine, theirs in zip(grads, (p.grad, t.grad)):
            torch.testing.assert_close(mine.cpu(), theirs, rtol=tolerance, atol=tolerance)


@cuda
def test_giou_loss_autograd_through_public_op_without_sync(gpu, monkeypatch):
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")  # the value check syncs by design
    pred, target = gpu.to(*_giou_pairs(4096, torch.float32))
    pred.requires_grad_(True)
    with gpu.no_host_sync():
        loss = ops.giou_loss(pred, target, reduction="mean", backend="native")
        loss.backward()
    expected = torchvision.ops.generalized_box_iou_loss(pred.detach().cpu().requires_grad_(),
                                                        target.cpu(), reduction="mean")
    torch.testing.assert_close(loss.detach().cpu(), expected.detach(), rtol=1e-5, atol=1e-6)


@cuda
def test_giou_loss_empty_and_non_finite(gpu):
    empty = torch.zeros(0, 4, device=gpu.device)
    assert C.giou_loss(empty, empty, "mean", 1e-7).item() == 0.0
    assert C.giou_loss(empty, empty, "none", 1e-7).shape == (0,)
    pred, target = gpu.to(*_giou_pairs(64, torch.float32))
    pred[3, 1] = float("nan")
    target[5, 2] = float("inf")
    grads = C.giou_loss_backward(torch.ones((), device=gpu.device), pred, target, "sum", 1e-7)
    gpu.synchronize()
    assert grads[0].shape == (64, 4)


# ---------------------------------------------------------------- nms / batched_nms

def _nms_inputs(n, dtype=torch.float32, seed=0, tied=False):
    g = _gen(seed)
    boxes = clustered_boxes(n, clusters=max(n // 40, 1), scale=800.0, dtype=dtype, generator=g)
    boxes[::3] = boxes[::3].round()
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    if tied:
        scores = (scores * 10).floor() / 10
    idxs = torch.randint(0, 80, (n,), generator=g)
    return boxes, scores, idxs


@cuda
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 5000, 20000])
@pytest.mark.parametrize("tied", [False, True])
def test_nms_and_batched_nms_equal_the_reference(gpu, n, tied):
    """Up to 20k boxes, equal to the reference run on the same device (issue 19: above
    1000 boxes they were compared with the CPU kernel, which shares their box math)."""
    n = gpu.size(n, min(n, 1000))
    boxes, scores, idxs = gpu.to(*_nms_inputs(n, tied=tied))
    for threshold in (0.3, 0.5, 0.7):
        assert torch.equal(C.nms(boxes, scores, threshold), ref_nms.nms(boxes, scores, threshold))
        _assert_batched_nms_is_the_reference(C.batched_nms(boxes, scores, idxs, threshold),
                                             boxes, scores, idxs, threshold)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_matches_torchvision(gpu, dtype):
    n = gpu.size(5000, 1000)
    boxes, scores, idxs = _nms_inputs(n, dtype, seed=3)
    scores = torch.randperm(n, generator=_gen(4)).to(dtype) / n  # distinct scores
    boxes, scores, idxs = gpu.to(boxes, scores, idxs)
    assert torch.equal(C.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(C.batched_nms(boxes, scores, idxs, 0.5),
                       torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5))


@cuda
def test_nms_single_category_segments_and_non_finite_values(gpu):
    n = gpu.size(3000, 600)
    boxes, scores, idxs = _nms_inputs(n, seed=5)
    idxs = torch.where(torch.arange(n) < n - 100, 0, torch.arange(n))  # one big segment
    boxes[::11, 0] = float("nan")
    boxes[::13, 3] = float("inf")
    scores[::17] = float("nan")
    scores[8::17] = -float("nan")  # the sign bit set: first all the same (issue 17)
    boxes, scores, idxs = gpu.to(boxes, scores, idxs)
    _assert_batched_nms_is_the_reference(C.batched_nms(boxes, scores, idxs, 0.5), boxes,
                                         scores, idxs, 0.5)
    positive_nan = torch.where(scores.isnan(), scores.abs(), scores)  # the reference's sort
    assert torch.equal(C.nms(boxes, scores, 0.5), ref_nms.nms(boxes, positive_nan, 0.5))


@cuda
def test_nms_empty_and_single_box(gpu):
    empty, no_scores = gpu.to(torch.zeros(0, 4), torch.zeros(0))
    no_idxs = gpu.to(torch.zeros(0, dtype=torch.int64))
    for keep in (C.nms(empty, no_scores, 0.5), C.batched_nms(empty, no_scores, no_idxs, 0.5)):
        assert keep.dtype == torch.int64 and keep.shape == (0,) and keep.device == empty.device
    one, score = gpu.to(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1))
    assert C.nms(one, score, 0.5).tolist() == [0]
    assert C.batched_nms(one, score, gpu.to(torch.tensor([-9])), 0.5).tolist() == [0]


# ------------------------------------------------ class-aware NMS per category segment

def _mask_words(lengths) -> int:
    """Words of the per-segment mask: the sum over segments of L * ceil(L / 64)."""
    return sum(length * -(-length // 64) for length in lengths)


def _expected_layout(lengths) -> torch.Tensor:
    """csrc/ops/nms_layout.h's table, in Python integers."""
    rows = [[] for _ in range(6)]
    start = mask_end = tile_end = row_words_end = 0
    for length in lengths:
        words = -(-length // 64)
        mask_end += length * words
        tile_end += words * words
        row_words_end += words
        for row, value in zip(rows, (start, length, words, mask_end, tile_end, row_words_end)):
            row.append(value)
        start += length
    return torch.tensor(rows, dtype=torch.int64).reshape(6, len(lengths))


@pytest.mark.skipif(not _extension.native_has_kernel("nms", "cpu"),
                    reason=_extension.NATIVE_ERROR or "fcos_fast._C has no CPU kernels")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_nms_segment_layout_is_the_per_segment_formula(device, gpu):
    """The table the CUDA batched_nms sizes and indexes its mask with: segment s owns
    L_s * ceil(L_s / 64) words after the segments before it; zero-length segments (the
    padding past the last one) own nothing."""
    device = "cpu" if device == "cpu" else gpu.device.type
    for lengths in ([1, 63, 64, 65, 128, 129, 1000, 3, 32768, 32769, 7, 0, 0], [5], []):
        table = C._nms_segment_layout(torch.tensor(lengths, dtype=torch.int64, device=device))
        assert table.dtype == torch.int64 and table.device.type == device
        assert torch.equal(table.cpu(), _expected_layout(lengths))
    # Post-processing's batch: 16 images x 80 classes, up to 1000 candidates each.
    counts = torch.randint(0, 1001, (16 * 80,), generator=_gen(3)).tolist()
    table = C._nms_segment_layout(torch.tensor(counts, device=device))
    n = sum(counts)
    assert table[3, -1].item() == _mask_words(counts) < n * -(-n // 64) / 100


@cuda
def test_batched_nms_mask_is_allocated_per_segment(gpu):
    """Many small categories: the mask allocated is sum L * ceil(L / 64) words, nothing
    near N * ceil(N / 64) words (5 GB here) is, and everything else is O(N)."""
    g = _gen(21)
    categories = gpu.size(2000, 60)
    lengths = torch.randint(1, 201, (categories,), generator=g)
    n = int(lengths.sum())
    boxes = clustered_boxes(n, clusters=n // 40, scale=800.0, generator=g)
    scores = torch.rand(n, generator=g)
    idxs = torch.repeat_interleave(torch.arange(categories), lengths)[
        torch.randperm(n, generator=g)]
    mask_bytes = 8 * _mask_words(lengths.tolist())
    full_mask_bytes = 8 * n * -(-n // 64)
    b, s, i = gpu.to(boxes, scores, idxs)
    keep, peak, sizes = gpu.allocations(lambda: C.batched_nms(b, s, i, 0.5))
    if sizes is not None:
        assert mask_bytes + 512 * n < full_mask_bytes / 10  # the bounds can tell them apart
        assert any(mask_bytes <= size < mask_bytes + 512 for size in sizes), (mask_bytes, sizes)
        assert max(sizes) < max(mask_bytes + 512, 128 * n)
        assert peak <= mask_bytes + 512 * n
    _assert_batched_nms_is_the_reference(keep, b, s, i, 0.5, sample=40)


@cuda
@pytest.mark.parametrize("per_class", [100, 1000])
def test_batched_nms_at_postprocess_shapes_equals_torchvision(gpu, per_class):
    """16 images x 80 classes as categories, up to `per_class` candidates each, in
    post-processing's order (by category) and shuffled. Against torchvision's CPU kernel:
    its CUDA kernel is built with FMA contraction, which can round an IoU next to the
    threshold differently, and here are some 10^8 pairs; and against the reference on
    the device, category by category on a sample."""
    images, per_class = gpu.size(16, 1), gpu.size(per_class, min(per_class, 200))
    boxes, scores, idxs = postprocess_candidates(batch=images, per_class=per_class,
                                                 generator=_gen(per_class))
    b, s, i = gpu.to(boxes, scores, idxs)
    got = C.batched_nms(b, s, i, 0.5)
    assert torch.equal(got.cpu(), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
    shuffle = torch.randperm(scores.shape[0], generator=_gen(1))
    for threshold in (0.5, 0.7):
        got = C.batched_nms(b, s, i, threshold)
        _assert_batched_nms_is_the_reference(got, b, s, i, threshold, sample=30)
        # Distinct scores: the kept boxes do not depend on where they are.
        dev_shuffle = gpu.to(shuffle)
        got_shuffled = C.batched_nms(b[dev_shuffle], s[dev_shuffle], i[dev_shuffle], threshold)
        assert torch.equal(shuffle[got_shuffled.cpu()], got.cpu())


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_at_postprocess_shapes_with_tied_scores(gpu, dtype):
    """Equal scores keep the lower index first (torchvision's order is unstable there),
    in post-processing's order and shuffled: against the reference on a sample."""
    boxes, scores, idxs = postprocess_candidates(batch=gpu.size(16, 1),
                                                 per_class=gpu.size(300, 100), tied=True,
                                                 dtype=dtype, generator=_gen(5))
    shuffle = torch.randperm(scores.shape[0], generator=_gen(6))
    for b, s, i in ((boxes, scores, idxs), (boxes[shuffle], scores[shuffle], idxs[shuffle])):
        b, s, i = gpu.to(b, s, i)
        _assert_batched_nms_is_the_reference(C.batched_nms(b, s, i, 0.5), b, s, i, 0.5,
                                             sample=30)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_planted_threshold_pairs_in_many_categories(gpu, dtype):
    """In each of 500 categories a pair at IoU exactly 0.5, every pair at the same place:
    both kept at threshold 0.5, the lower-scoring one dropped at 0.49, and no box ever
    suppresses one of another category."""
    categories = 500
    square, half = [16.0, 16.0, 48.0, 48.0], [16.0, 16.0, 48.0, 32.0]  # IoU 512 / 1024
    boxes = torch.tensor([square, half] * categories, dtype=dtype)
    scores = torch.linspace(1.0, 0.001, 2 * categories, dtype=dtype)
    idxs = (torch.arange(2 * categories) // 2) * 7919 - 10**6
    shuffle = torch.randperm(2 * categories, generator=_gen(2))
    boxes, scores, idxs = gpu.to(boxes[shuffle], scores[shuffle], idxs[shuffle])
    by_score = torch.argsort(scores, descending=True)
    assert torch.equal(C.batched_nms(boxes, scores, idxs, 0.5), by_score)
    squares = by_score[gpu.to(shuffle)[by_score] % 2 == 0]
    assert torch.equal(C.batched_nms(boxes, scores, idxs, 0.49), squares)


@cuda
def test_batched_nms_non_finite_inputs_without_validation(gpu, monkeypatch):
    """FCOS_FAST_VALIDATE=0 lets NaN and inf through to the kernels: no crash, no hang,
    no write out of bounds, and the reference's result."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    boxes, scores, idxs = postprocess_candidates(batch=gpu.size(16, 1),
                                                 per_class=gpu.size(200, 60), generator=_gen(8))
    boxes[::7, 0] = float("nan")
    boxes[::11, 2] = float("inf")
    boxes[::13] = float("nan")
    boxes[::17, 1] = float("-inf")
    scores[::5] = float("nan")
    idxs = idxs * 2**40 - 2**62
    b, s, i = gpu.to(boxes, scores, idxs)
    got = ops.batched_nms(b, s, i, 0.5, backend="native")
    gpu.synchronize()
    _assert_batched_nms_is_the_reference(got, b, s, i, 0.5, sample=30)
    first = gpu.size(20000, 2000)
    got = ops.nms(b[:first], s[:first], 0.5, backend="native")
    gpu.synchronize()
    assert torch.equal(got, ref_nms.nms(b[:first], s[:first], 0.5))


@cuda
@pytest.mark.parametrize("long_length", [4096, 4097, 40000])
def test_long_segment_sweeps_correctly(gpu, long_length):
    """A segment of more than 4096 boxes (64 mask words) keeps its removed set in global
    memory rather than shared memory, beside 300 small categories in shared memory."""
    g = _gen(long_length)
    long_length = gpu.size(long_length, 200 + long_length % 2)
    n = long_length + gpu.size(3000, 300)
    boxes = clustered_boxes(n, clusters=n // 40, scale=800.0, generator=g)
    scores = (torch.randperm(n, generator=g).float() + 1) / n  # distinct
    idxs = torch.cat([torch.full((long_length,), 7),
                      torch.randint(100, 400, (n - long_length,), generator=g)])
    idxs = idxs[torch.randperm(n, generator=g)]
    b, s, i = gpu.to(boxes, scores, idxs)
    _assert_batched_nms_is_the_reference(C.batched_nms(b, s, i, 0.5), b, s, i, 0.5, sample=20)
    in_long = gpu.to(torch.nonzero(idxs == 7).flatten())
    kept = C.batched_nms(b, s, i, 0.5)
    long_kept = kept[torch.isin(kept, in_long)]
    assert torch.equal(long_kept, in_long[ref_nms.nms(b[in_long], s[in_long], 0.5)])
    # One long segment; torchvision's CPU kernel (see the post-processing test).
    assert torch.equal(C.nms(b, s, 0.5).cpu(), torchvision.ops.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------- per_class_topk

# (k, score_thresh): FCOS's, a small k, every point (k > N), none.
TOPK_CASES = ((1000, 0.05), (100, 0.3), (20000, -1.0), (0, 0.05))


def _full_size_topk_scores(dtype, levels, seed, points=17064):
    """One 800 x 1024 image's scores for 80 classes, with NaN and -0.0, and with only
    ``levels`` distinct values (many ties) unless None."""
    scores = torch.sigmoid(torch.randn(points, 80, generator=_gen(seed), dtype=torch.float64)
                           * 2 - 3)
    if levels:
        scores = (scores * levels).floor() / levels
    scores = scores.to(dtype)
    scores[::97, 3] = float("nan")
    scores[::89, 5] = -0.0
    return scores


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [None, 16])
def test_per_class_topk_full_size_equals_reference(gpu, dtype, levels):
    scores = _full_size_topk_scores(dtype, levels, seed=7)
    for k, threshold in TOPK_CASES:
        expected = ref_topk.per_class_topk(scores, k, threshold)
        got = C.per_class_topk(gpu.to(scores), k, threshold)
        for e, o in zip(expected, got):
            assert o.dtype == e.dtype and torch.equal(o.cpu(), e)
        assert torch.equal(torch.signbit(got[0].cpu()), torch.signbit(expected[0]))


# ---------------------------------------------------------------- fixed-size ops

def _padded_candidates(per_class, *, dtype=torch.float32, tied=False, seed=0, categories=None,
                       segments=16 * 80):
    """post-processing's candidates as batched_nms_padded takes them: one segment per
    (image, class), ``per_class`` slots, ``counts`` used (a few full, a few empty), the
    slots unsorted, the unused ones holding real boxes with the best scores."""
    g = _gen(seed)
    boxes = torch.stack([clustered_boxes(per_class, clusters=max(per_class // 40, 1), scale=800.0,
                                         dtype=torch.float64, generator=g)
                         for _ in range(segments)])  # each segment on a few objects
    boxes[::3] = boxes[::3].round()
    scores = torch.rand(segments, per_class, generator=g, dtype=torch.float64)
    if tied:
        scores = (scores * 10).floor() / 10
    counts = torch.randint(0, per_class + 1, (segments,), generator=g)
    counts[::7], counts[3::5] = per_class, 0
    scores = torch.where(torch.arange(per_class) < counts[:, None], scores, 2.0)
    idxs = None if categories is None else torch.randint(0, categories, (segments, per_class),
                                                         generator=g)
    return boxes.to(dtype), scores.to(dtype), counts, idxs


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [None, 16])
def test_per_class_topk_padded_full_size_equals_reference(gpu, dtype, levels):
    scores = _full_size_topk_scores(dtype, levels, seed=8)
    scores_dev = gpu.to(scores)
    for k, threshold in TOPK_CASES:
        expected = ref_topk_padded.per_class_topk_padded(scores, k, threshold)
        with gpu.no_host_sync():
            got = C.per_class_topk_padded(scores_dev, k, threshold)
        for e, o in zip(expected, got, strict=True):
            assert o.dtype == e.dtype and o.shape == e.shape and torch.equal(o.cpu(), e)
        assert torch.equal(torch.signbit(got[0].cpu()), torch.signbit(expected[0]))
    for empty in (torch.zeros(0, 80, dtype=dtype), torch.zeros(50, 0, dtype=dtype)):
        got = C.per_class_topk_padded(gpu.to(empty), 10, 0.1)
        assert [tuple(t.shape) for t in got] == [
            (empty.shape[1], min(10, empty.shape[0]))] * 2 + [(empty.shape[1],)]
        assert not got[2].any()


@cuda
@pytest.mark.parametrize("per_class", [100, 1000])
@pytest.mark.parametrize("categories", [None, 3])
def test_batched_nms_padded_at_postprocess_shapes_equals_the_reference(gpu, per_class,
                                                                      categories):
    """16 images x 80 classes, a segment each, k slots, without a host sync, against the
    reference on the device (issue 19: it was the CPU kernel)."""
    per_class = gpu.size(per_class, min(per_class, 130))
    boxes, scores, counts, idxs = gpu.to(*_padded_candidates(
        per_class, seed=per_class, categories=categories, segments=gpu.size(16 * 80, 40)))
    for threshold in (0.5, 0.7):
        expected = ref_padded.batched_nms_padded(boxes, scores, counts, threshold, idxs)
        with gpu.no_host_sync():
            got = C.batched_nms_padded(boxes, scores, counts, threshold, idxs)
        assert got.dtype == torch.bool and torch.equal(got, expected)
    if per_class == 100 and categories is None:  # torchvision's own kernel, a few segments
        got = C.batched_nms_padded(boxes, scores, counts, 0.5).cpu()
        for s in (0, 1, 2, 7):
            n = int(counts[s])
            kept = torchvision.ops.nms(boxes[s, :n].cpu(), scores[s, :n].cpu(), 0.5)
            assert sorted(kept.tolist()) == torch.nonzero(got[s]).flatten().tolist()


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_padded_tied_scores_and_half_precision(gpu, dtype):
    boxes, scores, counts, idxs = _padded_candidates(
        gpu.size(300, 100), dtype=dtype, tied=True, seed=5, categories=4,
        segments=gpu.size(16 * 80, 40))
    for i in (None, idxs):
        expected = ref_padded.batched_nms_padded(*gpu.to(boxes, scores, counts), 0.5, gpu.to(i))
        got = C.batched_nms_padded(*gpu.to(boxes, scores, counts), 0.5, gpu.to(i))
        assert torch.equal(got, expected)
    half = ops.batched_nms_padded(*gpu.to(boxes.half(), scores.half(), counts), 0.5,
                                  backend="native")
    expected = ref_padded.batched_nms_padded(*gpu.to(boxes.half().float(),
                                                     scores.half().float(), counts), 0.5)
    assert torch.equal(half, expected)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_padded_planted_threshold_pairs(gpu, dtype):
    """In each of 2000 segments a pair at IoU exactly 0.5 (in either slot order) and a far
    box: all kept at 0.5, the lower of the pair dropped at 0.49; segments all at the same
    place never suppress each other."""
    from tests.ops.test_batched_nms_padded import planted_pairs

    boxes, scores, counts, kept_at_049 = planted_pairs(2000, dtype)
    args = gpu.to(boxes, scores, counts)
    assert C.batched_nms_padded(*args, 0.5).all()
    assert torch.equal(C.batched_nms_padded(*args, 0.49).cpu(), kept_at_049)


@cuda
@pytest.mark.parametrize("length", [64, 65, 4096, 4097, 20000])
def test_batched_nms_padded_long_segments(gpu, length):
    """Up to 4096 slots (64 words) the sweep's removed set is in shared memory, beyond in
    global scratch; tiles past a segment's count are skipped."""
    g = _gen(length)
    length = gpu.size(length, min(length, 130 + length % 2))
    segments = 3
    boxes = clustered_boxes(segments * length, clusters=segments * length // 40 + 1,
                            scale=800.0, generator=g).view(segments, length, 4)
    scores = torch.rand(segments, length, generator=g)
    counts = torch.tensor([length, length // 2 + 1, 1])
    idxs = torch.randint(0, 5, (segments, length), generator=g)
    for i in (None, idxs):
        args = gpu.to(boxes, scores, counts, i)
        expected = ref_padded.batched_nms_padded(*args[:3], 0.5, args[3])
        assert torch.equal(C.batched_nms_padded(*args[:3], 0.5, args[3]), expected)


@cuda
def test_batched_nms_padded_empty_and_zero_counts(gpu):
    for shape in ((0, 10), (5, 0), (0, 0)):
        boxes = torch.zeros(*shape, 4, device=gpu.device)
        keep = C.batched_nms_padded(boxes, torch.zeros(shape, device=gpu.device),
                                    torch.zeros(shape[0], dtype=torch.int64, device=gpu.device),
                                    0.5)
        assert keep.shape == shape and keep.dtype == torch.bool
    boxes, scores, _, _ = _padded_candidates(50, seed=2, segments=gpu.size(1280, 40))
    keep = C.batched_nms_padded(*gpu.to(boxes, scores, torch.zeros(scores.shape[0],
                                                                   dtype=torch.int64)), 0.5)
    assert not keep.any()


@cuda
def test_batched_nms_padded_non_finite_inputs_without_validation(gpu, monkeypatch):
    """NaN and inf boxes and scores, counts out of range: no crash, no hang, no write out of
    bounds (only used slots kept), and the reference's result, for both backends."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    boxes, scores, counts, idxs = _padded_candidates(gpu.size(200, 40), seed=8, categories=3,
                                                     segments=gpu.size(1280, 24))
    boxes[:, ::7, 0] = float("nan")
    boxes[:, ::11, 2] = float("inf")
    boxes[::13] = float("nan")
    boxes[:, ::17, 1] = float("-inf")
    scores[:, ::5] = float("nan")
    counts[::9] = -3
    counts[1::9] = 10**12
    idxs = idxs * 2**40 - 2**62
    args = gpu.to(boxes, scores, counts)
    expected = ref_padded.batched_nms_padded(*args, 0.5, gpu.to(idxs))
    for backend in ("native", "triton"):
        got = ops.batched_nms_padded(*args, 0.5, gpu.to(idxs), backend=backend)
        gpu.synchronize()
        assert torch.equal(got, expected)
    assert not got[::9].any()


@cuda
def test_batched_nms_padded_memory_is_per_segment(gpu):
    """The mask is S * L * ceil(L / 64) words, allocated once; the rest is O(S * L)."""
    boxes, scores, counts, _ = _padded_candidates(gpu.size(1000, 130), seed=3,
                                                  segments=gpu.size(1280, 20))
    segments, length = scores.shape
    mask_bytes = 8 * segments * length * -(-length // 64)
    args = gpu.to(boxes, scores, counts)
    keep, peak, sizes = gpu.allocations(lambda: C.batched_nms_padded(*args, 0.5))
    assert torch.equal(keep, ref_padded.batched_nms_padded(*args, 0.5))
    if sizes is not None:
        assert mask_bytes < 8 * (segments * length) ** 2 / 10**4
        assert any(mask_bytes <= size < mask_bytes + 512 for size in sizes), (mask_bytes, sizes)
        assert peak <= mask_bytes + 64 * segments * length + (1 << 20)


@cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_fixed_size_postprocess_captures_in_a_cuda_graph(gpu, backend, monkeypatch):
    """per_class_topk_padded -> boxes -> batched_nms_padded, captured once and replayed on
    new scores: a host sync would fail the capture; replays equal eager calls, which equal
    the reference."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    g = _gen(11)
    points, classes, k = gpu.size(17064, 300), gpu.size(80, 3), gpu.size(1000, 40)
    point_boxes = gpu.to(clustered_boxes(points, clusters=max(points // 40, 1), scale=800.0,
                                         generator=g))

    def postprocess(scores):
        top, index, counts = ops.per_class_topk_padded(scores, k, 0.05, backend=backend)
        boxes = point_boxes[index.clamp(min=0)]
        return top, index, ops.batched_nms_padded(boxes, top, counts, 0.6, backend=backend)

    def new_scores(seed):
        return gpu.to(torch.sigmoid(torch.randn(points, classes, generator=_gen(seed)) * 2 - 3))

    static_scores = new_scores(0)
    if gpu.cuda_only("CUDA graph capture"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: Triton compiles, CUB sizes its storage
                postprocess(static_scores)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = postprocess(static_scores)

        def replay():
            graph.replay()
            torch.cuda.synchronize()
            return static_out
    else:
        def replay():
            return postprocess(static_scores)
    for seed in (1, 2):
        scores = new_scores(seed)
        static_scores.copy_(scores)
        out = replay()
        for got, expected in zip(out, postprocess(scores), strict=True):
            assert torch.equal(got, expected)
        top, index, keep = out
        assert torch.equal(keep, ref_padded.batched_nms_padded(
            point_boxes[index.clamp(min=0)], top, (index >= 0).sum(1), 0.6))


@cuda
def test_triton_fixed_size_ops_equal_native_without_host_sync(gpu, monkeypatch):
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    boxes, scores, counts, idxs = gpu.to(*_padded_candidates(
        gpu.size(300, 70), seed=4, categories=3, segments=gpu.size(1280, 12)))
    topk_scores = gpu.to(torch.sigmoid(torch.randn(gpu.size(17064, 300), gpu.size(80, 3),
                                                   generator=_gen(4)) * 2 - 3))
    k = gpu.size(1000, 40)

    def run(backend):
        return (*ops.per_class_topk_padded(topk_scores, k, 0.05, backend=backend),
                ops.batched_nms_padded(boxes, scores, counts, 0.5, backend=backend),
                ops.batched_nms_padded(boxes, scores, counts, 0.5, idxs, backend=backend))

    run("triton")  # compile the kernels first
    with gpu.no_host_sync():
        got = run("triton")
        expected = run("native")
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
