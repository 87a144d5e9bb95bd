"""The native CUDA kernels (csrc/ops/cuda) at full FCOS size, against the reference.

Every test is marked ``cuda`` and skipped without a GPU. The CUDA kernels share their
per-element math with the CPU kernels (csrc/ops/box_math.h) and are built without FMA
contraction, so assignments, per-pair losses, kept indices and top-k are compared for
equality; gradients and reduced losses within a few ulps. fcos_assign and giou_loss must
not synchronise with the host: they run under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision

from benchmarks.cases import clustered_boxes, fcos_points, padded_gt, random_boxes
from fcos_fast import _extension
from fcos_fast.ops.reference import fcos_assign as ref_assign
from fcos_fast.ops.reference import giou_loss as ref_giou
from fcos_fast.ops.reference import nms as ref_nms
from fcos_fast.ops.reference import per_class_topk as ref_topk

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _extension.native_has_kernel("nms", "cuda"),
                       reason="fcos_fast._C was built without CUDA kernels"),
]
C = torch.ops.fcos_fast
DTYPES = [torch.float32, torch.float64]


@contextlib.contextmanager
def no_host_sync():
    """Any host-device synchronisation inside raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_boxes", [10, 200, 300])  # 300: more than one shared tile
def test_fcos_assign_full_size_equals_reference(dtype, num_boxes):
    args = _assign_inputs(num_boxes, dtype)
    expected = ref_assign.fcos_assign(*args)
    cuda_args = [a.cuda() for a in args]
    with no_host_sync():
        got = C.fcos_assign(*cuda_args)
    assert torch.equal(got.cpu(), expected)


def test_fcos_assign_bad_counts_and_non_finite_values_are_safe():
    points, lower, upper, radius, gt, _ = _assign_inputs(20, torch.float32, batch=3)
    counts = torch.tensor([-4, 7, 10**9])
    points = points.clone()
    points[::91, 0] = float("nan")
    gt = gt.clone()
    gt[0, 1, 2] = float("inf")
    expected = ref_assign.fcos_assign(points, lower, upper, radius, gt,
                                      counts.clamp(0, gt.shape[1]))
    got = C.fcos_assign(*(t.cuda() for t in (points, lower, upper, radius, gt, counts)))
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("integral", [False, True])
@pytest.mark.parametrize("misaligned", [False, True])  # float4 / double2 path or scalar path
def test_giou_loss_full_size_equals_reference(dtype, integral, misaligned):
    n = 100_000
    pred, target = _giou_pairs(n, dtype, integral=integral)
    pred_cuda, target_cuda = pred.cuda(), target.cuda()
    if misaligned:  # contiguous, but one element off 16-byte alignment
        pred_cuda = torch.empty(4 * n + 1, dtype=dtype, device="cuda")[1:].view(n, 4).copy_(pred)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    expected = ref_giou.giou_loss(pred, target, "none", 1e-7)
    with no_host_sync():
        got = C.giou_loss(pred_cuda, target_cuda, "none", 1e-7)
    assert torch.equal(got.cpu(), expected)
    for reduction in ("none", "mean", "sum"):
        upstream = torch.rand(n if reduction == "none" else (), generator=_gen(1), dtype=dtype)
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        reduced = ref_giou.giou_loss(p, t, reduction, 1e-7)
        (reduced * upstream).sum().backward()
        upstream_cuda = upstream.cuda()  # a copy from the host syncs: outside the check
        with no_host_sync():
            loss = C.giou_loss(pred_cuda, target_cuda, reduction, 1e-7)
            grads = C.giou_loss_backward(upstream_cuda, pred_cuda, target_cuda, reduction, 1e-7)
        torch.testing.assert_close(loss.cpu(), reduced.detach(), rtol=1e-5 if dtype ==
                                   torch.float32 else 1e-12, atol=0)
        for mine, theirs in zip(grads, (p.grad, t.grad)):
            torch.testing.assert_close(mine.cpu(), theirs, rtol=tolerance, atol=tolerance)


def test_giou_loss_autograd_through_public_op_without_sync(monkeypatch):
    from fcos_fast import ops

    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")  # the value check syncs by design
    pred, target = (t.cuda() for t in _giou_pairs(4096, torch.float32))
    pred.requires_grad_(True)
    with no_host_sync():
        loss = ops.giou_loss(pred, target, reduction="mean", backend="native")
        loss.backward()
    expected = torchvision.ops.generalized_box_iou_loss(pred.detach().cpu().requires_grad_(),
                                                        target.cpu(), reduction="mean")
    torch.testing.assert_close(loss.detach().cpu(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_giou_loss_empty_and_non_finite():
    empty = torch.zeros(0, 4, device="cuda")
    assert C.giou_loss(empty, empty, "mean", 1e-7).item() == 0.0
    assert C.giou_loss(empty, empty, "none", 1e-7).shape == (0,)
    pred, target = (t.cuda() for t in _giou_pairs(64, torch.float32))
    pred[3, 1] = float("nan")
    target[5, 2] = float("inf")
    grads = C.giou_loss_backward(torch.ones((), device="cuda"), pred, target, "sum", 1e-7)
    torch.cuda.synchronize()
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


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 5000, 20000])
@pytest.mark.parametrize("tied", [False, True])
def test_nms_and_batched_nms_equal_the_cpu_kernels(n, tied):
    """The CPU kernels equal the reference (test_native_kernels.py) and are fast enough
    to compare with at 20k boxes; the reference itself is checked at 1000."""
    boxes, scores, idxs = _nms_inputs(n, tied=tied)
    for threshold in (0.3, 0.5, 0.7):
        expected = C.nms(boxes, scores, threshold)
        assert torch.equal(C.nms(boxes.cuda(), scores.cuda(), threshold).cpu(), expected)
        expected_batched = C.batched_nms(boxes, scores, idxs, threshold)
        got = C.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), threshold)
        assert torch.equal(got.cpu(), expected_batched)
        if n <= 1000:
            assert torch.equal(expected, ref_nms.nms(boxes, scores, threshold))
            assert torch.equal(expected_batched,
                               ref_nms.batched_nms(boxes, scores, idxs, threshold))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_matches_torchvision_cuda(dtype):
    boxes, scores, idxs = _nms_inputs(5000, dtype, seed=3)
    scores = torch.randperm(5000, generator=_gen(4)).to(dtype) / 5000  # distinct scores
    boxes, scores, idxs = boxes.cuda(), scores.cuda(), idxs.cuda()
    assert torch.equal(C.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(C.batched_nms(boxes, scores, idxs, 0.5),
                       torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5))


def test_nms_single_category_segments_and_non_finite_values():
    boxes, scores, idxs = _nms_inputs(3000, seed=5)
    idxs = torch.where(torch.arange(3000) < 2900, 0, torch.arange(3000))  # one big segment
    boxes[::11, 0] = float("nan")
    boxes[::13, 3] = float("inf")
    scores[::17] = float("nan")
    expected = C.batched_nms(boxes, scores, idxs, 0.5)
    got = C.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(C.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), C.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------- per_class_topk

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [None, 16])
def test_per_class_topk_full_size_equals_reference(dtype, levels):
    g = _gen(7)
    scores = torch.sigmoid(torch.randn(17064, 80, generator=g, dtype=torch.float64) * 2 - 3)
    if levels:
        scores = (scores * levels).floor() / levels
    scores = scores.to(dtype)
    scores[::97, 3] = float("nan")
    scores[::89, 5] = -0.0
    for k, threshold in ((1000, 0.05), (100, 0.3), (20000, -1.0), (0, 0.05)):
        expected = ref_topk.per_class_topk(scores, k, threshold)
        got = C.per_class_topk(scores.cuda(), k, threshold)
        for e, o in zip(expected, got):
            assert o.dtype == e.dtype and torch.equal(o.cpu(), e)
        assert torch.equal(torch.signbit(got[0].cpu()), torch.signbit(expected[0]))
