"""The native CPU kernels (csrc/ops/cpu) called directly, beyond the generated matrix.

The kernels claim more than agreement within a tolerance: the same arithmetic as the
reference, so equal results bit for bit (losses, assignments, kept indices, top-k), on
inputs built to hit their shortcuts — the culling of fcos_assign, the radix sorts of
nms, the pruning of per_class_topk — and on inputs only a direct op call can pass
(NaN, out-of-range num_gt), which must never crash.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.cases import clustered_boxes, fcos_points, padded_gt, random_boxes
from fcos_fast import _extension
from fcos_fast.ops.reference import fcos_assign as ref_assign
from fcos_fast.ops.reference import giou_loss as ref_giou
from fcos_fast.ops.reference import nms as ref_nms
from fcos_fast.ops.reference import per_class_topk as ref_topk

pytestmark = pytest.mark.skipif(
    not _extension.native_has_kernel("nms", "cpu"),
    reason=_extension.NATIVE_ERROR or "fcos_fast._C has no CPU kernels")
C = torch.ops.fcos_fast
DTYPES = [torch.float32, torch.float64]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- fcos_assign

def _assign_case(seed, dtype, shuffle, grid_boxes):
    g = _gen(seed)
    points, lower, upper, radius, _, _ = fcos_points((160, 224), dtype=dtype)
    if shuffle:  # no spatial coherence: the per-block culling must still be exact
        perm = torch.randperm(points.shape[0], generator=g)
        points, lower, upper, radius = points[perm], lower[perm], upper[perm], radius[perm]
    boxes = []
    for count in (0, 1, 7, 40):
        b = random_boxes(count, scale=224.0, min_size=2.0, dtype=dtype, generator=g)
        if grid_boxes:  # sides on the point grid and duplicate boxes: edge and area ties
            b = (b / 8).round() * 8
            if count > 1:
                b[1] = b[0]
        boxes.append(b)
    gt, num_gt = padded_gt(boxes, slots=43)
    return points, lower, upper, radius, gt.to(dtype), num_gt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("grid_boxes", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_fcos_assign_is_bitwise_the_reference(dtype, shuffle, grid_boxes, seed):
    args = _assign_case(seed, dtype, shuffle, grid_boxes)
    assert torch.equal(C.fcos_assign(*args), ref_assign.fcos_assign(*args))


def test_fcos_assign_clamps_num_gt_and_survives_non_finite_values():
    points, lower, upper, radius, gt, num_gt = _assign_case(0, torch.float32, False, True)
    bad_counts = torch.tensor([-5, 2, 43, 10**6])
    clamped = bad_counts.clamp(0, gt.shape[1])
    expected = ref_assign.fcos_assign(points, lower, upper, radius, gt, clamped)
    assert torch.equal(C.fcos_assign(points, lower, upper, radius, gt, bad_counts), expected)

    points, gt, radius = points.clone(), gt.clone(), radius.clone()
    points[::97, 0] = float("nan")
    points[5::101, 1] = float("inf")
    gt[0, 0, 2] = float("nan")
    gt[1, 0, 0] = float("-inf")
    radius[::53] = float("inf")
    got = C.fcos_assign(points, lower, upper, radius, gt, clamped)
    assert torch.equal(got, ref_assign.fcos_assign(points, lower, upper, radius, gt, clamped))


def test_fcos_assign_empty_shapes():
    points, lower, upper, radius, gt, num_gt = _assign_case(1, torch.float32, False, False)
    assert C.fcos_assign(points[:0], lower[:0], upper[:0], radius[:0], gt, num_gt).shape == (4, 0)
    out = C.fcos_assign(points, lower, upper, radius, gt[:, :0], torch.zeros(4, dtype=torch.long))
    assert bool((out == -1).all())


# ---------------------------------------------------------------- giou_loss

def _giou_pairs(seed, n, dtype, integral=False):
    g = _gen(seed)
    target = random_boxes(n, min_size=1.0, dtype=torch.float64, generator=g)
    pred = target + (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 40
    if integral:  # many equal coordinates: max/min ties split the gradient
        pred, target = pred.round(), target.round()
    pred[torch.rand(n, generator=g) < 0.2] += 500
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("integral", [False, True])
def test_giou_loss_values_are_bitwise_and_gradients_match_autograd(dtype, integral):
    pred, target = _giou_pairs(3, 5000, dtype, integral)
    assert torch.equal(C.giou_loss(pred, target, "none", 1e-7),
                       ref_giou.giou_loss(pred, target, "none", 1e-7))
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    for reduction in ("none", "mean", "sum"):
        upstream = torch.rand(5000 if reduction == "none" else (), generator=_gen(1),
                              dtype=dtype)
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        (ref_giou.giou_loss(p, t, reduction, 1e-7) * upstream).sum().backward()
        got = C.giou_loss_backward(upstream, pred, target, reduction, 1e-7)
        for mine, theirs in zip(got, (p.grad, t.grad)):
            torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
def test_giou_loss_reductions_are_exact_sums_and_thread_independent(dtype):
    pred, target = _giou_pairs(4, 30001, dtype)
    exact = ref_giou.giou_loss(pred, target, "none", 1e-7).double().sum()
    ulp = {torch.float32: 2**-23, torch.float64: 2**-52}[dtype]
    threads = torch.get_num_threads()
    try:
        results = []
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            results.append(C.giou_loss(pred, target, "sum", 1e-7))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    assert abs(float(results[0]) - float(exact)) <= 4 * ulp * abs(float(exact))
    mean = C.giou_loss(pred, target, "mean", 1e-7)
    assert abs(float(mean) - float(exact) / 30001) <= 4 * ulp * abs(float(exact) / 30001)


def test_giou_loss_direct_call_checks_and_non_finite_values():
    pred, target = _giou_pairs(5, 8, torch.float32)
    with pytest.raises(RuntimeError, match="pred"):
        C.giou_loss(pred[:, :3], target[:, :3], "none", 1e-7)
    with pytest.raises(RuntimeError, match="reduction"):
        C.giou_loss(pred, target, "avg", 1e-7)
    with pytest.raises(RuntimeError, match="grad_output"):
        C.giou_loss_backward(torch.ones(3), pred, target, "none", 1e-7)
    pred[1, 0] = float("nan")
    target[2, 3] = float("inf")
    assert C.giou_loss(pred, target, "none", 1e-7).shape == (8,)
    grads = C.giou_loss_backward(torch.ones(8), pred, target, "none", 1e-7)
    assert all(g.shape == (8, 4) for g in grads)
    assert C.giou_loss(pred[:0], target[:0], "mean", 1e-7).item() == 0.0


# ---------------------------------------------------------------- nms / batched_nms

def _nms_case(seed, n, dtype, tied_scores):
    g = _gen(seed)
    boxes = clustered_boxes(n, clusters=max(n // 30, 1), dtype=dtype, generator=g)
    boxes[::3] = boxes[::3].round()  # exact IoU ties between rounded boxes
    if tied_scores:
        scores = (torch.rand(n, generator=g) * 6).floor().to(dtype) / 6
        scores[::7] = -0.0  # -0.0 ties +0.0, as in torch.sort
    else:
        scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    return boxes, scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tied_scores", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_and_batched_nms_are_the_reference(dtype, tied_scores, threshold):
    boxes, scores = _nms_case(int(threshold * 10), 700, dtype, tied_scores)
    assert torch.equal(C.nms(boxes, scores, threshold), ref_nms.nms(boxes, scores, threshold))
    g = _gen(9)
    for idxs in (torch.randint(0, 80, (700,), generator=g),
                 torch.randint(-3, 3, (700,), generator=g),
                 torch.tensor([-2**63, 2**63 - 1, 0])[torch.randint(0, 3, (700,), generator=g)],
                 torch.zeros(700, dtype=torch.long)):
        assert torch.equal(C.batched_nms(boxes, scores, idxs, threshold),
                           ref_nms.batched_nms(boxes, scores, idxs, threshold))


def test_nms_nan_scores_and_boxes_follow_the_reference():
    boxes, scores = _nms_case(11, 200, torch.float32, tied_scores=True)
    scores[::13] = float("nan")  # NaN sorts first, as torch.sort(descending=True)
    boxes[::17, 2] = float("nan")  # NaN IoUs suppress nothing
    idxs = torch.randint(0, 5, (200,), generator=_gen(2))
    assert torch.equal(C.nms(boxes, scores, 0.5), ref_nms.nms(boxes, scores, 0.5))
    assert torch.equal(C.batched_nms(boxes, scores, idxs, 0.5),
                       ref_nms.batched_nms(boxes, scores, idxs, 0.5))


# ---------------------------------------------------------------- per_class_topk

def _assert_topk_equal(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and torch.equal(g, e)
    assert torch.equal(torch.signbit(got[0]), torch.signbit(expected[0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,k", [(5000, 7, 10), (3000, 3, 1000), (40, 5, 100), (2500, 2, 2500)])
@pytest.mark.parametrize("levels", [None, 8])
def test_per_class_topk_is_the_reference(dtype, n, c, k, levels):
    """k much smaller than the candidates forces many prunes; few levels force ties."""
    scores = torch.rand(n, c, generator=_gen(n + c), dtype=torch.float64)
    if levels:
        scores = (scores * levels).floor() / levels
    scores = scores.to(dtype)
    for threshold in (-1.0, 0.0, 0.25, 0.999):
        _assert_topk_equal(C.per_class_topk(scores, k, threshold),
                           ref_topk.per_class_topk(scores, k, threshold))


def test_per_class_topk_special_values():
    scores = torch.tensor([[float("nan"), 0.0, -0.0, float("inf")],
                           [-0.0, float("-inf"), 0.0, float("nan")],
                           [0.0, 0.5, -0.0, -1.0]]).repeat(50, 1)
    for threshold in (float("-inf"), -0.5, 0.0, 1.0):
        for k in (0, 1, 3, 200):
            _assert_topk_equal(C.per_class_topk(scores, k, threshold),
                               ref_topk.per_class_topk(scores, k, threshold))
    with pytest.raises(RuntimeError, match="k"):
        C.per_class_topk(scores, -1, 0.0)
