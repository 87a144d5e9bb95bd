"""The Triton kernels (``kernels/``) against the reference, where their structure can break.

The op tests (``test_<op>.py``) run every backend, Triton included, through the common
matrix. This file aims at what is particular to the kernels: the 64-box words and the
one-program sweep of NMS, the box chunks of ``fcos_assign`` (a tie across two chunks),
the per-program partial sums of the GIoU reduction, the chunks and segments of
``per_class_topk`` and its sort-based path for huge ``k``, the flat walk, per-program
sums and chunked launches of ``sigmoid_focal_loss``, unvalidated input, and that nothing
but the output sizing synchronises with the host.

Without a GPU the kernels run on CPU tensors in the Triton interpreter (small cases);
the same tests run at full size on CUDA (marked ``cuda``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():  # before triton is imported (tests/conftest.py does too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torchvision  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fcos_fast import ops  # noqa: E402
from tests.ops._cases import (clustered_boxes, fcos_points, padded_gt, random_boxes,  # noqa: E402
                              why_not)

DEVICES = [
    pytest.param("cpu", id="interpreted", marks=pytest.mark.skipif(
        "triton" not in ops.available_backends("cpu"), reason=why_not("triton", "cpu"))),
    pytest.param("cuda", marks=pytest.mark.cuda),
]


def _small(device: str) -> bool:
    """The interpreter is slow: CPU cases stay small, CUDA ones are FCOS-sized."""
    return device == "cpu"


def _triton(op, *args, **kwargs):
    return getattr(ops, op)(*args, backend="triton", **kwargs)


def _reference(op, *args, **kwargs):
    args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    return getattr(ops, op)(*args, backend="reference", **kwargs)


def _assert_same(got, expected):
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        assert torch.equal(g.cpu(), e), (g, e)


# ---------------------------------------------------------------- nms / batched_nms

def _nms_case(seed: int, n: int, *, clusters: int = 5, tied_scores: bool = False,
              categories: int = 3, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(n, clusters=clusters, generator=g)
    if tied_scores:  # few distinct scores: the order of ties decides what is kept
        scores = torch.randint(0, 6, (n,), generator=g).float() / 6
    else:
        scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, categories, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def _check_nms(boxes, scores, idxs, threshold):
    _assert_same(_triton("nms", boxes, scores, threshold),
                 _reference("nms", boxes, scores, threshold))
    _assert_same(_triton("batched_nms", boxes, scores, idxs, threshold),
                 _reference("batched_nms", boxes, scores, idxs, threshold))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95),
       tied_scores=st.booleans())
def test_nms_random(device, seed, threshold, tied_scores):
    n = 150 if _small(device) else 6000  # 3 mask words / 94 words in the sweep
    _check_nms(*_nms_case(seed, n, tied_scores=tied_scores, device=device), threshold)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [63, 64, 65, 129])
def test_nms_word_boundaries(device, n):
    """One cluster: long suppression chains that cross the 64-box words."""
    _check_nms(*_nms_case(n, n, clusters=1, tied_scores=True, device=device), 0.3)


def _nms_edge_cases():
    square = [0.0, 0.0, 4.0, 4.0]
    point = [1.0, 1.0, 1.0, 1.0]
    return {
        "one_box": ([square], [0.5], 0.5),
        "identical_boxes_tied_scores": ([square] * 6, [0.5, 0.7, 0.5, 0.7, 0.5, 0.1], 0.5),
        # IoU of two empty boxes is 0/0: NaN, which suppresses nothing.
        "zero_area_boxes": ([point, point, [1.0, 1, 1, 3], square], [0.9, 0.8, 0.7, 0.6], 0.0),
        "iou_exactly_at_threshold": ([square, [0.0, 0, 4, 2]], [0.9, 0.8], 0.5),
        "negative_threshold_suppresses_disjoint": ([square, [10.0, 10, 12, 12]], [0.9, 0.8],
                                                   -0.1),
        "threshold_one_keeps_all": ([square] * 3, [0.3, 0.2, 0.1], 1.0),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(_nms_edge_cases()))
def test_nms_edge_cases(device, name):
    boxes, scores, threshold = _nms_edge_cases()[name]
    boxes = torch.tensor(boxes, device=device)
    scores = torch.tensor(scores, device=device)
    idxs = torch.arange(boxes.shape[0], device=device) % 2
    _check_nms(boxes, scores, idxs, threshold)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nms_dtypes(device, dtype):
    boxes, scores, idxs = _nms_case(3, 90, tied_scores=True, device=device)
    _check_nms(boxes.to(dtype), scores.to(dtype), idxs, 0.45)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_empty(device):
    boxes, scores = torch.zeros(0, 4, device=device), torch.zeros(0, device=device)
    idxs = torch.zeros(0, dtype=torch.int64, device=device)
    assert _triton("nms", boxes, scores, 0.5).shape == (0,)
    assert _triton("batched_nms", boxes, scores, idxs, 0.5).shape == (0,)


def _postprocess_like(seed: int, num_categories: int, sizes, *, distinct_scores=True,
                      device="cpu"):
    """Boxes of many categories (images x classes) of the given sizes, clustered within
    each category so that they suppress each other; distinct scores unless asked."""
    g = torch.Generator().manual_seed(seed)
    sizes = [int(s) for s in sizes]
    boxes = torch.cat([clustered_boxes(s, clusters=max(1, s // 12), generator=g)
                       for s in sizes])
    idxs = torch.cat([torch.full((s,), c) for c, s in
                      zip(torch.randperm(num_categories, generator=g)[:len(sizes)].tolist(),
                          sizes)])
    n = boxes.shape[0]
    if distinct_scores:
        scores = torch.randperm(n, generator=g).float() / n
    else:
        scores = torch.randint(0, 5, (n,), generator=g).float() / 5
    shuffle = torch.randperm(n, generator=g)
    return boxes[shuffle].to(device), scores[shuffle].to(device), idxs[shuffle].to(device)


def test_batched_nms_mask_is_allocated_per_category():
    """The mask holds sum(L_c * ceil(L_c / 64)) words, never N * ceil(N / 64): here at the
    postprocess shape of 16 images x 80 classes, up to 1000 candidates each."""
    from fcos_fast.kernels.nms import sweep_plan

    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 1001, (16 * 80,), generator=g)
    sizes[:5] = torch.tensor([1, 63, 64, 65, 1000])  # word boundaries
    boxes = random_boxes(int(sizes.sum()), generator=g)
    idxs = torch.repeat_interleave(torch.randperm(16 * 80, generator=g) * 7 - 300, sizes)
    shuffle = torch.randperm(boxes.shape[0], generator=g)
    boxes, idxs = boxes[shuffle], idxs[shuffle]
    scores = torch.rand(boxes.shape[0], generator=g)
    plan = sweep_plan(boxes, scores, idxs)
    lengths = torch.unique(idxs, return_counts=True)[1]
    expected = int((lengths * ((lengths + 63) // 64)).sum())
    assert plan.mask.numel() == expected
    n = boxes.shape[0]
    assert expected < n * ((n + 63) // 64) / 500  # 1.25 GB for all N: 2 MB here
    assert int(plan.segments.count) == lengths.numel()
    # The sweep's scratch (a removed bitset per segment) fits its allocation.
    assert int(((lengths + 63) // 64).sum()) <= plan.removed.numel()
    # nms: one segment of all the boxes.
    assert sweep_plan(boxes[:100], scores[:100], None).mask.numel() == 100 * 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [
    pytest.param([3, 1, 7, 2, 5, 1, 1, 4, 9, 2] * 6, id="60_small_categories"),
    pytest.param([150, 1, 64, 65, 2, 30, 1], id="multi_word_segments"),
    pytest.param([200], id="one_category"),
])
def test_batched_nms_per_category_matches_torchvision(device, sizes):
    """torchvision's per-class path (its coordinate-offset trick, taken below 4000 boxes
    on CPU, can round IoUs differently; see test_nms.py)."""
    if not _small(device):
        sizes = [s * 10 for s in sizes]
    boxes, scores, idxs = _postprocess_like(len(sizes), 2 * len(sizes), sizes, device=device)
    for threshold in (0.3, 0.6):
        expected = torchvision.ops.boxes._batched_nms_vanilla(boxes.cpu(), scores.cpu(),
                                                               idxs.cpu(), threshold)
        got = _triton("batched_nms", boxes, scores, idxs, threshold)
        assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_tied_scores_across_categories(device):
    """Few distinct scores: the merge keeps equal scores in increasing index order."""
    boxes, scores, idxs = _postprocess_like(5, 40, [5, 9, 1, 70, 3] * 4, distinct_scores=False,
                                            device=device)
    _assert_same(_triton("batched_nms", boxes, scores, idxs, 0.4),
                 _reference("batched_nms", boxes, scores, idxs, 0.4))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_iou_exactly_at_threshold_in_each_category(device):
    """A pair at IoU exactly 0.5 in every category (kept at 0.5, suppressed at 0.49), with
    the categories' boxes on top of each other (they must not suppress across)."""
    square, half = [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0]
    boxes = torch.tensor([square, half] * 40, device=device)
    scores = torch.linspace(1.0, 0.1, 80, device=device)
    idxs = torch.arange(80, device=device) // 2 * 3
    for threshold, kept in ((0.5, 80), (0.49, 40)):
        got = _triton("batched_nms", boxes, scores, idxs, threshold)
        assert got.numel() == kept
        _assert_same(got, _reference("batched_nms", boxes, scores, idxs, threshold))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_nan_scores_without_validation(device, monkeypatch):
    """FCOS_FAST_VALIDATE=0 and NaN scores: no crash, the reference's answer (NaN sorts
    first, as in torch.argsort)."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    boxes, scores, idxs = _postprocess_like(6, 20, [12, 1, 40, 7, 66], device=device)
    scores[::7] = float("nan")
    _assert_same(_triton("batched_nms", boxes, scores, idxs, 0.5),
                 _reference("batched_nms", boxes, scores, idxs, 0.5))
    _assert_same(_triton("nms", boxes, scores, 0.5), _reference("nms", boxes, scores, 0.5))


def _cuda_radix_argsort(argsort):
    """``torch.argsort`` as CUDA computes it on floats: a stable radix sort of the bit
    patterns with CUB's key transform (-0.0 as +0.0), so a NaN with the sign bit set ranks
    below -inf. Integer inputs sort as usual."""
    def radix_argsort(input, dim=-1, descending=False, stable=False):
        if not input.is_floating_point():
            return argsort(input, dim=dim, descending=descending, stable=stable)
        value = torch.where(input == 0, torch.zeros_like(input), input).double()
        bits = value.view(torch.int64)
        # Negative patterns flip all bits, the others the sign bit: an unsigned order,
        # here as a signed one (the sign bit flipped once more).
        key = torch.where(bits < 0, ~bits, bits)
        return argsort(key, dim=dim, descending=descending, stable=True)

    return radix_argsort


@pytest.mark.parametrize("op", ["nms", "batched_nms", "batched_nms_padded"])
def test_nan_scores_of_either_sign_sort_first_under_cudas_radix_order(op, monkeypatch):
    """NaN scores with the sign bit set (value checks off): CUDA's radix sort ranks them
    below -inf, torch.sort on the CPU first (issue 17: the kept boxes differed between
    devices). The launchers make every NaN positive before sorting; checked here with
    CUDA's order emulated, in the interpreter."""
    if "triton" not in ops.available_backends("cpu"):
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    boxes, scores, idxs = _postprocess_like(6, 20, [12, 1, 40, 7, 65])
    scores[::7] = -float("nan")
    scores[1::7] = float("nan")
    assert torch.signbit(scores[::7]).all() and not torch.signbit(scores[1::7]).any()
    if op == "batched_nms_padded":
        args = (boxes.view(5, 25, 4), scores.view(5, 25), torch.tensor([25, 3, 0, 25, 17]),
                0.5, idxs.view(5, 25))
    else:
        args = (boxes, scores, idxs, 0.5) if op == "batched_nms" else (boxes, scores, 0.5)
    expected = _reference(op, *args)
    monkeypatch.setattr(torch, "argsort", _cuda_radix_argsort(torch.argsort))
    assert not torch.equal(_reference(op, *args), expected)  # the emulation bites
    _assert_same(_triton(op, *args), expected)


# ---------------------------------------------------------------- giou_loss

def _giou_pairs(seed: int, n: int, dtype=torch.float64):
    """Overlapping, disjoint and nested pairs, with some sides tied exactly."""
    g = torch.Generator().manual_seed(seed)
    target = random_boxes(n, min_size=1.0, dtype=torch.float64, generator=g)
    pred = target + (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 30
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)
    tie = torch.rand(n, 4, generator=g) < 0.15
    pred[tie] = target[tie]  # max/min ties: the gradient splits in halves
    pred[torch.rand(n, generator=g) < 0.2] += 300  # disjoint: no intersection gradient
    return pred.to(dtype), target.to(dtype)


def _giou_with_grads(backend, pred, target, reduction):
    pred = pred.detach().clone().requires_grad_(True)
    target = target.detach().clone().requires_grad_(True)
    loss = ops.giou_loss(pred, target, reduction=reduction, backend=backend)
    # Made on the CPU for every device: CUDA's linspace rounds differently (a quarter of
    # 200k values one ulp off), which a bitwise comparison of gradients would see.
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).to(loss.device)
    (loss * upstream.reshape(loss.shape)).sum().backward()
    return loss.detach(), pred.grad, target.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_giou_loss_random(device, reduction, dtype, seed):
    # Past one program of 1024 pairs: the mean and sum add several partial sums.
    n = 2500 if _small(device) else 200_000
    pred, target = _giou_pairs(seed, n, dtype)
    expected = _giou_with_grads("reference", pred, target, reduction)
    got = _giou_with_grads("triton", pred.to(device), target.to(device), reduction)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == dtype
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        torch.testing.assert_close(g.cpu(), e, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_giou_loss_ties_and_degenerate_boxes(device, reduction):
    """Sides tied between prediction and target, touching, nested, disjoint, empty."""
    pred = torch.tensor([[0.0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 10, 10],
                         [0, 0, 1, 1], [1, 1, 1, 3], [1, 1, 1, 1], [2, 0, 6, 4]],
                        dtype=torch.float64)
    target = torch.tensor([[0.0, 0, 4, 4], [2, 0, 4, 2], [0, 1, 4, 3], [2, 3, 5, 7],
                           [5, 5, 6, 6], [0, 0, 4, 4], [1, 1, 1, 1], [0, 0, 4, 4]],
                          dtype=torch.float64)
    expected = _giou_with_grads("reference", pred, target, reduction)
    got = _giou_with_grads("triton", pred.to(device), target.to(device), reduction)
    _assert_giou_bitwise(got, expected, reduction)


def _assert_giou_bitwise(got, expected, reduction):
    """Gradients (and unreduced losses) bit for bit, signed zeros included; a reduced
    loss adds in another order than torch.sum, so it is close, not equal."""
    if reduction != "none":
        torch.testing.assert_close(got[0].cpu(), expected[0], rtol=1e-6, atol=1e-6)
        got, expected = got[1:], expected[1:]
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}
    for g, e in zip(got, expected, strict=True):
        g = g.cpu()
        assert g.dtype == e.dtype
        different = g.view(bits[g.dtype]) != e.view(bits[e.dtype])
        assert not different.any(), (g[different], e[different])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_giou_loss_gradients_equal_the_reference_bitwise(device, reduction, dtype, seed):
    """The backward follows autograd's graph and its order of accumulation (issue 11:
    before, the gradients differed from the reference's by ulps)."""
    n = 2500 if _small(device) else 200_000
    pred, target = _giou_pairs(seed, n, dtype)
    expected = _giou_with_grads("reference", pred, target, reduction)
    got = _giou_with_grads("triton", pred.to(device), target.to(device), reduction)
    _assert_giou_bitwise(got, expected, reduction)


@pytest.mark.parametrize("device", DEVICES)
def test_giou_loss_reduction_is_deterministic(device):
    """Partial sums added in a fixed order: the same bits every time."""
    pred, target = (t.to(device) for t in _giou_pairs(0, 3000, torch.float32))
    first = _triton("giou_loss", pred, target, reduction="sum")
    assert all(torch.equal(_triton("giou_loss", pred, target, reduction="sum"), first)
               for _ in range(3))
    torch.testing.assert_close(first, _triton("giou_loss", pred, target).double().sum().float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_giou_loss_half_precision(device, dtype):
    pred, target = (t.to(dtype) for t in _giou_pairs(1, 50))
    expected = _giou_with_grads("reference", pred.float(), target.float(), "none")
    got = _giou_with_grads("triton", pred.to(device), target.to(device), "none")
    # The loss stays float32, as torchvision's; the input gradients are in the inputs' dtype.
    assert got[0].dtype == torch.float32 and all(g.dtype == dtype for g in got[1:])
    torch.testing.assert_close(got[0].cpu(), expected[0], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_giou_loss_backward_op_opcheck(device, reduction):
    """The backward kernel is an op of its own (the op tests opcheck the forward)."""
    pred, target = (t.float().to(device) for t in _giou_pairs(2, 16))
    grad = torch.rand(16 if reduction == "none" else (), device=device)
    torch.library.opcheck(torch.ops.fcos_fast.giou_loss_backward_triton,
                          (grad, pred, target, reduction, 1e-7))


# ---------------------------------------------------------------- sigmoid_focal_loss

def _focal_case(seed: int, n: int, c: int, dtype=torch.float32, weighted=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * 6).to(dtype)
    labels = torch.randint(-1, c, (n,), generator=g)
    compute = torch.promote_types(dtype, torch.float32)
    weight = (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).to(compute) \
        if weighted else None
    return logits, labels, weight


def _focal_with_grad(backend, logits, labels, weight, reduction, gamma=2.0):
    x = logits.detach().clone().requires_grad_(True)
    loss = ops.sigmoid_focal_loss(x, labels, weight=weight, gamma=gamma, reduction=reduction,
                                  backend=backend)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
    (loss * upstream.reshape(loss.shape)).sum().backward()
    return loss.detach(), x.grad


def _check_focal(logits, labels, weight, reduction, device, gamma=2.0):
    """Triton against the reference on the same (rounded) inputs, in float64."""
    got = _focal_with_grad("triton", logits.to(device), labels.to(device),
                           None if weight is None else weight.to(device), reduction, gamma)
    expected = _focal_with_grad("reference", logits.double(), labels,
                                None if weight is None else weight.double(), reduction, gamma)
    tolerance = 1e-12 if logits.dtype == torch.float64 else 2e-6
    for g, e in zip(got, expected, strict=True):
        scale = float(e.abs().nan_to_num(0, 0, 0).max()) if e.numel() else 1.0
        torch.testing.assert_close(g.cpu().double(), e, rtol=tolerance, atol=tolerance * scale,
                                   equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("classes", [80, 20, 3, 1])
def test_focal_loss_flat_walk_and_program_sums(device, reduction, classes):
    """Rows that straddle programs (C = 3, 20: a program's block does not end on a row),
    one class per row (C = 1), and past one program's block: several per-program sums."""
    n = 2600 // classes if _small(device) else 400_000 // classes
    _check_focal(*_focal_case(classes, n, classes), reduction, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 2.5])
def test_focal_loss_dtypes_and_gamma(device, dtype, gamma):
    """Half-precision logits read as they are (16 bytes a thread); gamma 0 (exactly 1,
    never exp(0 * -inf)) and a fractional gamma through the general exp."""
    logits, labels, weight = _focal_case(7, 90, 20, dtype)
    logits[::11, 0] = 80.0  # saturated: sigmoid(-w) underflows
    got = _focal_with_grad("triton", logits.to(device), labels.to(device), weight.to(device),
                           "sum", gamma)
    expected = _focal_with_grad("reference", logits.double(), labels, weight.double(), "sum",
                                gamma)
    assert got[0].dtype == torch.promote_types(dtype, torch.float32) and got[1].dtype == dtype
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got[0].cpu().double(), expected[0], rtol=rtol, atol=0)
    grad_rtol = 1e-12 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps
    info = torch.finfo(dtype)
    torch.testing.assert_close(got[1].cpu().double(), expected[1], rtol=grad_rtol,
                               atol=2 * info.smallest_normal * info.eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_focal_loss_chunked_launches(device, reduction, monkeypatch):
    """Past MAX_LAUNCH_ELEMENTS (2^31, 32-bit offsets) the launcher splits the rows into
    launches whose per-program sums share one buffer: here with a limit of 64 elements,
    against the single launch."""
    from fcos_fast.kernels import sigmoid_focal_loss as focal_kernels

    case = [t.to(device) for t in _focal_case(3, 61, 7)]
    whole = _focal_with_grad("triton", *case, reduction)
    monkeypatch.setattr(focal_kernels, "MAX_LAUNCH_ELEMENTS", 64)
    assert len(focal_kernels.row_chunks(61, 7)) == 7
    chunked = _focal_with_grad("triton", *case, reduction)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if reduction == "none":
        assert torch.equal(chunked[0], whole[0])


def test_focal_loss_row_chunks_keep_alignment():
    """Chunks of a multiple of 16,384 rows (aligned slices, program sums from a multiple of
    16) that never exceed the limit, over every row."""
    from fcos_fast.kernels.sigmoid_focal_loss import MAX_LAUNCH_ELEMENTS, row_chunks

    for rows, classes in ((40_000_000, 80), (3_000_000_000, 1), (10, 200_000), (5, 3)):
        chunks = row_chunks(rows, classes)
        assert chunks[0][0] == 0 and chunks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        assert all((last - first) * classes <= MAX_LAUNCH_ELEMENTS for first, last in chunks)
        if MAX_LAUNCH_ELEMENTS // classes >= 16384:
            assert all(first % 16384 == 0 for first, _ in chunks)


@pytest.mark.parametrize("device", DEVICES)
def test_focal_loss_unvalidated_labels_and_non_finite_logits(device, monkeypatch):
    """Labels outside [-1, C) mark no class (never an index); NaN/inf logits give the
    reference's NaN and limits."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    logits, labels, weight = _focal_case(4, 40, 6)
    labels[::5] = torch.tensor([6, -7, 2**40, -(2**40), 100, 9, 6, 1000])
    logits[1, 2], logits[2, 0], logits[3, 5] = float("nan"), float("inf"), float("-inf")
    for reduction in ("none", "sum"):
        _check_focal(logits, labels, weight, reduction, device)


@pytest.mark.parametrize("device", DEVICES)
def test_focal_loss_backward_op_opcheck(device):
    """The backward kernel is an op of its own (the op tests opcheck the forward)."""
    logits, labels, weight = (t.to(device) for t in _focal_case(5, 12, 5))
    for reduction, grad in (("none", torch.rand(12, 5)), ("mean", torch.rand(()))):
        torch.library.opcheck(torch.ops.fcos_fast.sigmoid_focal_loss_backward_triton,
                              (grad.to(device), logits, labels, weight, 0.25, 1.5, reduction))


# ---------------------------------------------------------------- fcos_assign

def _assign_case(seed: int, num_images: int, max_boxes: int, image_size, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    points, lower, upper, radius, _, _ = fcos_points(image_size, dtype=dtype)
    scale = float(max(image_size))
    boxes = [random_boxes(int(torch.randint(0, max_boxes + 1, (1,), generator=g)), scale=scale,
                          min_size=4.0, dtype=dtype, generator=g) for _ in range(num_images)]
    gt, num_gt = padded_gt(boxes, slots=max_boxes, scale=scale)
    return points, lower, upper, radius, gt, num_gt


def _check_assign(*args, device):
    got = _triton("fcos_assign", *(a.to(device) for a in args))
    assert got.device == torch.device(device) or got.device.type == device
    _assert_same(got, _reference("fcos_assign", *args))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), max_boxes=st.integers(0, 70))
def test_fcos_assign_random(device, seed, max_boxes):
    """Up to 70 box slots: three chunks of 32 boxes, padding rows past num_gt."""
    if _small(device):
        case = _assign_case(seed, 2, max_boxes, (48, 64))
    else:
        case = _assign_case(seed, 8, 3 * max_boxes, (800, 1024))
    _check_assign(*case, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_fcos_assign_area_ties_across_chunks_and_edges(device):
    points, lower, upper, radius, _, _ = fcos_points((64, 64))
    box = torch.tensor([8.0, 8.0, 40.0, 40.0])
    gt = random_boxes(70, scale=64.0, min_size=40.0) + 200  # far away: never matched
    gt[3] = gt[37] = gt[69] = box  # one box in three chunks: slot 3 must win
    gt[50] = torch.tensor([4.0, 4.0, 36.0, 36.0])  # another box of the same area
    gt[10] = torch.tensor([12.0, 12.0, 12.0, 30.0])  # zero area: no point is inside it
    # A box whose sides run through point centers (x = 4 + 8k): points on an edge are out.
    gt[20] = torch.tensor([4.0, 4.0, 20.0, 20.0])
    num_gt = torch.tensor([70, 38, 0])
    gt = torch.stack([gt, gt, gt])
    _check_assign(points, lower, upper, radius, gt, num_gt, device=device)
    matched = _triton("fcos_assign", *(t.to(device) for t in (points, lower, upper, radius, gt,
                                                              num_gt))).cpu()
    assert 37 not in matched.tolist()[0] and 69 not in matched.tolist()[0]
    assert (matched[0] == 3).any() and (matched[2] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_fcos_assign_dtypes(device, dtype):
    _check_assign(*_assign_case(5, 2, 12, (40, 48), dtype), device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_fcos_assign_no_boxes(device):
    points, lower, upper, radius, _, _ = fcos_points((24, 32))
    for gt, num_gt in ((torch.zeros(2, 0, 4), torch.zeros(2, dtype=torch.int64)),
                       (torch.zeros(0, 5, 4), torch.zeros(0, dtype=torch.int64)),
                       (random_boxes(10).reshape(2, 5, 4), torch.zeros(2, dtype=torch.int64))):
        _check_assign(points, lower, upper, radius, gt, num_gt, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_fcos_assign_clamps_unvalidated_num_gt(device, monkeypatch):
    """With FCOS_FAST_VALIDATE=0 a count outside [0, G] is clamped, never read past."""
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    points, lower, upper, radius, gt, _ = _assign_case(4, 3, 9, (40, 48))
    got = _triton("fcos_assign", *(t.to(device) for t in (
        points, lower, upper, radius, gt, torch.tensor([-5, 9, 1000]))))
    expected = _reference("fcos_assign", points, lower, upper, radius, gt,
                          torch.tensor([0, 9, 9]))
    _assert_same(got, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fcos_assign_non_finite_without_validation(device, monkeypatch):
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    points, lower, upper, radius, gt, num_gt = _assign_case(6, 2, 8, (40, 48))
    points[::7, 0] = float("nan")
    points[1::9, 1] = float("inf")
    gt[0, 1, 2] = float("nan")
    gt[1, 0, :2] = float("-inf")
    got = _triton("fcos_assign", *(t.to(device) for t in (points, lower, upper, radius, gt,
                                                            num_gt))).cpu()
    assert got.shape == (2, points.shape[0])
    assert bool(((got >= -1) & (got < num_gt[:, None])).all())
    assert bool((got[:, ::7] == -1).all())  # a NaN coordinate matches nothing


# ---------------------------------------------------------------- per_class_topk

def _topk_scores(seed: int, n: int, c: int, ties: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, c, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 6).floor() / 6
    return scores.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), c=st.integers(1, 3),
       k=st.integers(0, 300), thresh=st.floats(-0.1, 0.9), ties=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_per_class_topk_random(device, seed, n, c, k, thresh, ties, dtype):
    """n > 256 streams two chunks through the running top list."""
    if not _small(device):
        n, c, k = n * 60, c * 27, k * 4
    scores = _topk_scores(seed, n, c, ties, dtype)
    _assert_same(_triton("per_class_topk", scores.to(device), k, thresh),
                 _reference("per_class_topk", scores, k, thresh))


def _topk_edge_cases():
    scores = _topk_scores(0, 40, 3, ties=True)
    signed_zeros = torch.tensor([[0.0, -0.0], [-0.0, 0.0], [0.0, 0.0], [-0.0, -0.0]])
    # 1100 points, k small: chunks of 256, segments of 1024 points, two segments merged.
    late_best = torch.zeros(1100, 2)
    late_best[1090] = 1.0  # the best point in the last chunk of the last segment
    late_best[5] = 0.5
    return {
        "k_one": (scores, 1, 0.1),
        "k_larger_than_points": (scores, 100, 0.1),
        "nothing_above_threshold": (scores, 5, 1.0),
        "score_equal_to_threshold_is_out": (scores, 50, 0.5),
        "signed_zeros_tie_by_index": (signed_zeros, 3, -1.0),
        "nan_and_inf": (torch.tensor([[float("nan"), float("inf")], [float("-inf"), 0.5],
                                      [0.7, float("nan")], [float("inf"), -float("inf")]]),
                        3, float("-inf")),
        "best_in_last_segment": (late_best, 2, 0.0),
        "all_tied_across_segments": (torch.full((1100, 2), 0.25), 3, 0.0),
        "ties_across_segments": (_topk_scores(1, 1100, 2, ties=True), 40, 0.3),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(_topk_edge_cases()))
def test_per_class_topk_edge_cases(device, name):
    scores, k, thresh = _topk_edge_cases()[name]
    _assert_same(_triton("per_class_topk", scores.to(device), k, thresh),
                 _reference("per_class_topk", scores, k, thresh))


@pytest.mark.parametrize("device", DEVICES)
def test_per_class_topk_huge_k_takes_the_sort_path(device):
    """k beyond the 4096-entry register list: one sort of all classes instead."""
    scores = _topk_scores(1, 5000, 2, ties=True)
    _assert_same(_triton("per_class_topk", scores.to(device), 4500, 0.2),
                 _reference("per_class_topk", scores, 4500, 0.2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_per_class_topk_half_precision(device, dtype):
    scores = _topk_scores(2, 64, 3, ties=False, dtype=dtype)
    got = _triton("per_class_topk", scores.to(device), 9, 0.3)
    assert got[0].dtype == dtype
    _assert_same((got[0].float(), got[1], got[2]),
                 _reference("per_class_topk", scores.float(), 9, 0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_per_class_topk_empty(device):
    for scores, k in ((torch.zeros(0, 3), 5), (torch.zeros(5, 0), 5), (torch.rand(5, 3), 0)):
        got = _triton("per_class_topk", scores.to(device), k, 0.1)
        assert [t.shape for t in got] == [(0,)] * 3
        assert [t.dtype for t in got] == [torch.float32, torch.int64, torch.int64]


@pytest.mark.parametrize("device", DEVICES)
def test_per_class_topk_non_finite_without_validation(device):
    """per_class_topk validates no values: NaN/inf scores are simply never/always in."""
    scores = _topk_scores(3, 80, 2, ties=False)
    scores[::3, 0] = float("nan")
    scores[1::5, 1] = float("inf")
    _assert_same(_triton("per_class_topk", scores.to(device), 20, 0.5),
                 _reference("per_class_topk", scores, 20, 0.5))


# ---------------------------------------------------------------- torch.compile

@pytest.mark.parametrize("device", DEVICES)
def test_data_dependent_ops_compile_fullgraph(device):
    """nms and per_class_topk have data-dependent output sizes (new_dynamic_size)."""
    torch._dynamo.reset()
    boxes, scores, idxs = _nms_case(4, 40, device=device)
    topk_scores = _topk_scores(4, 30, 3, ties=True).to(device)

    def run(b, s, i, t):
        return (ops.nms(b, s, 0.5, backend="triton"),
                ops.batched_nms(b, s, i, 0.5, backend="triton"),
                *ops.per_class_topk(t, 5, 0.2, backend="triton"))

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
        for got, expected in zip(compiled(boxes, scores, idxs, topk_scores),
                                 run(boxes, scores, idxs, topk_scores), strict=True):
            assert torch.equal(got, expected)


# ---------------------------------------------------------------- GPU only

@pytest.mark.cuda
@pytest.mark.parametrize("op", ["nms", "batched_nms", "giou_loss", "giou_loss_backward",
                                "fcos_assign", "per_class_topk", "sigmoid_focal_loss",
                                "sigmoid_focal_loss_backward"])
def test_triton_ops_expose_their_kernels(op, gpu):
    """triton_op finds the kernels in the launcher's source (``wrap_triton(kernel)``):
    AOTAutograd's cache key hashes them, so an edited kernel is never served stale.
    (Under the interpreter the kernels are not JIT functions and are not listed: on the
    CPU, test_registration.py checks the same in a process with compiled kernels.)"""
    import torch._library.triton as library_triton

    kernels = library_triton.get_triton_kernels_for_op(f"fcos_fast::{op}_triton")
    if gpu.cuda_only("kernels listed in-process (JIT functions)"):
        assert kernels


class _ScalarReads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense``: every read of a tensor value by the host
    (``.item()``, ``int(t)``, and those inside ATen ops) goes through it, and on a GPU
    each is a host-device synchronisation."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_host_reads_of_tensor_values_on_the_cpu(monkeypatch):
    """What test_no_host_device_sync checks on a GPU, counted on the CPU: no launcher reads
    a tensor value on the host, but batched_nms once, to size its per-category mask
    (issue 17: it used torch.repeat_interleave, which reads two values on CUDA, its size
    and a check of its input, and none through the dispatcher on the CPU)."""
    from fcos_fast.kernels.nms import nms_keep_mask
    from fcos_fast.kernels.per_class_topk import per_class_topk_table

    if "triton" not in ops.available_backends("cpu"):
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    assign_args = _assign_case(0, 2, 10, (64, 64))
    pred, target = (t.float() for t in _giou_pairs(0, 100))
    boxes, scores, idxs = _nms_case(0, 150)
    with _ScalarReads() as reads:
        ops.fcos_assign(*assign_args, backend="triton")
        p = pred.clone().requires_grad_(True)
        ops.giou_loss(p, target, reduction="mean", backend="triton").backward()
        nms_keep_mask(boxes, scores, None, 0.5)
        per_class_topk_table(_topk_scores(0, 300, 4, ties=False), 20, 0.05)
    assert reads.count == 0
    with _ScalarReads() as reads:
        nms_keep_mask(boxes, scores, idxs, 0.5)
    assert reads.count == 1


@pytest.mark.cuda
def test_no_host_device_sync(gpu, monkeypatch):
    """fcos_assign, giou_loss and sigmoid_focal_loss forward and backward, the NMS mask +
    sweep and the top-k table launch without synchronising (value checks off, as in a
    trusted hot loop)."""
    from fcos_fast.kernels.nms import nms_keep_mask
    from fcos_fast.kernels.per_class_topk import per_class_topk_table

    monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    assign_args = gpu.to(*_assign_case(0, gpu.size(8, 1), gpu.size(100, 10),
                                       gpu.size((800, 1024), (64, 64))))
    pred, target = gpu.to(*(t.float() for t in _giou_pairs(0, gpu.size(100_000, 100))))
    boxes, scores, idxs = _nms_case(0, gpu.size(5000, 150), device=gpu.device)
    topk_scores = gpu.to(_topk_scores(0, gpu.size(17000, 300), gpu.size(80, 3), ties=False))

    logits, labels, weight = gpu.to(*_focal_case(0, gpu.size(16 * 22_300, 60),
                                                 gpu.size(80, 3)))

    def run():
        ops.fcos_assign(*assign_args, backend="triton")
        p = pred.clone().requires_grad_(True)
        ops.giou_loss(p, target, reduction="mean", backend="triton").backward()
        x = logits.clone().requires_grad_(True)
        ops.sigmoid_focal_loss(x, labels, weight=weight, reduction="sum",
                               backend="triton").backward()
        ops.sigmoid_focal_loss(x, labels, reduction="none", backend="triton").sum().backward()
        nms_keep_mask(boxes, scores, None, 0.5)
        per_class_topk_table(topk_scores, gpu.size(1000, 20), 0.05)

    run()  # compile the kernels first
    nms_keep_mask(boxes, scores, idxs, 0.5)
    with gpu.no_host_sync():
        run()
    # batched_nms: one synchronisation, the size of its per-category mask.
    if gpu.cuda_only("sync debug mode warnings"):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                nms_keep_mask(boxes, scores, idxs, 0.5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1


# ---------------------------------------------------------------- limits

def test_launch_grids_stay_within_cudas_limits():
    """Grid axis 1 holds at most 65,535 programs, axis 0 2^31 - 1 (issue 17: fcos_assign
    put its images on axis 1, per_class_topk its point segments, so 70,000 images or
    100M points could not launch). Past what one axis holds: an InputError naming the op."""
    from fcos_fast.kernels import fcos_assign, per_class_topk
    from fcos_fast.kernels._common import GRID_LIMITS

    configs = [fcos_assign.launch_config(17_821, 70_000, 100, torch.float32),
               per_class_topk.segment_launch_config(
                   100_000_000, 80, per_class_topk.list_block(100_000_000, 1), torch.float32)]
    for config in configs:
        assert all(programs <= limit for programs, limit in zip(config.grid, GRID_LIMITS))
    with pytest.raises(ops.InputError, match="fcos_assign on the triton backend.*native"):
        fcos_assign.launch_config(2**24, 2**20, 10, torch.float32)
    with pytest.raises(ops.InputError, match="per_class_topk on the triton backend.*int32"):
        per_class_topk.segment_launch_config(2**31, 2, 256, torch.float32)


@pytest.mark.slow
def test_giou_loss_addresses_pairs_past_2_29():
    """Row offsets in int64 (issue 17: 4 * row in int32 wrapped from 2^29 pairs and read
    outside the tensors). In a subprocess: before the fix it crashed."""
    if torch.cuda.is_available():
        pytest.skip("runs the interpreter, in a process of its own")
    script = os.path.join(os.path.dirname(__file__), "_giou_past_int32.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "equal to the reference" in result.stdout


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: every other element of a larger tensor."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype) if t.dim() else t
    if t.dim() == 0:
        return t
    wide[..., ::2] = t
    strided = wide[..., ::2]
    assert torch.equal(strided, t) and not strided.is_contiguous()
    return strided


def _direct_calls():
    """``(op, args)`` of every Triton op, small, for torch.ops.fcos_fast.<op>_triton."""
    boxes, scores, idxs = _nms_case(0, 70)
    pred, target = (t.float() for t in _giou_pairs(0, 30))
    padded = (boxes.view(7, 10, 4), scores.view(7, 10), torch.tensor([10, 3, 0, 10, 7, 1, 9]),
              0.5, idxs.view(7, 10))
    return [("nms", (boxes, scores, 0.5)), ("batched_nms", (boxes, scores, idxs, 0.5)),
            ("giou_loss", (pred, target, "none", 1e-7)),
            ("giou_loss_backward", (torch.rand(30), pred, target, "none", 1e-7)),
            ("fcos_assign", _assign_case(0, 2, 6, (24, 24))),
            ("per_class_topk", (_topk_scores(0, 40, 3, ties=False), 5, 0.1)),
            ("per_class_topk_padded", (_topk_scores(0, 40, 3, ties=False), 5, 0.1)),
            ("batched_nms_padded", padded),
            ("sigmoid_focal_loss", (*_focal_case(0, 30, 5), 0.25, 2.0, "sum", True)),
            ("sigmoid_focal_loss_backward", (torch.rand(30, 5), *_focal_case(1, 30, 5), 0.25,
                                             2.0, "none"))]


@pytest.mark.parametrize("op,args", _direct_calls(), ids=lambda value: (
    value if isinstance(value, str) else ""))
def test_triton_ops_called_directly_with_non_contiguous_tensors(op, args):
    """``torch.ops.fcos_fast.<op>_triton`` bypasses the public op's argument handling: the
    launcher must make its inputs contiguous, as the native ops do (issue 17: it indexed
    them as if they were)."""
    if "triton" not in ops.available_backends("cpu"):
        pytest.skip("needs the Triton interpreter")
    function = getattr(torch.ops.fcos_fast, f"{op}_triton")
    strided = [_strided(a) if isinstance(a, torch.Tensor) else a for a in args]
    expected = function(*args)
    got = function(*strided)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


# ---------------------------------------------------------------- device

def _kernels() -> dict:
    """Every Triton kernel of the backend, by name (once: where it is defined, not where it
    is imported, as giou_loss's partial-sum kernel is by the focal loss)."""
    from fcos_fast.kernels import fcos_assign, giou_loss, nms, per_class_topk, sigmoid_focal_loss

    return {f"{module.__name__}.{name}": value
            for module in (fcos_assign, giou_loss, nms, per_class_topk, sigmoid_focal_loss)
            for name, value in vars(module).items()
            if name.endswith("_kernel") and hasattr(value, "pre_run_hooks")
            and value.fn.__module__ == module.__name__}


def _run_every_kernel(device) -> None:
    """Every op once, forward and backward, small, each against the reference."""
    boxes, scores, idxs = _nms_case(0, 70, device=device)
    _check_nms(boxes, scores, idxs, 0.5)
    pred, target = (t.float().to(device) for t in _giou_pairs(0, 20))
    for reduction in ("none", "mean"):
        expected = _giou_with_grads("reference", pred.cpu(), target.cpu(), reduction)
        _assert_giou_bitwise(_giou_with_grads("triton", pred, target, reduction), expected,
                             reduction)
    _check_assign(*_assign_case(0, 1, 5, (16, 16)), device=device)
    scores = _topk_scores(0, 30, 2, ties=False)
    _assert_same(_triton("per_class_topk", scores.to(device), 3, 0.1),
                 _reference("per_class_topk", scores, 3, 0.1))
    for reduction in ("none", "sum"):
        _check_focal(*_focal_case(0, 9, 4), reduction, device)


def test_every_kernel_launches_inside_the_device_guard(monkeypatch):
    """Each launcher enters ``device_guard(tensor)`` around its launches (issue 11:
    there was none, and tensors on cuda:1 ran on the current device)."""
    from fcos_fast.kernels import fcos_assign, giou_loss, nms, per_class_topk, sigmoid_focal_loss

    if "triton" not in ops.available_backends("cpu"):
        pytest.skip("needs the Triton interpreter")
    guarded = []

    @contextlib.contextmanager
    def recording_guard(tensor):
        guarded.append(tensor.device)
        try:
            yield
        finally:
            guarded.pop()

    for module in (fcos_assign, giou_loss, nms, per_class_topk, sigmoid_focal_loss):
        monkeypatch.setattr(module, "device_guard", recording_guard)
    launched = {}
    for name, kernel in _kernels().items():
        monkeypatch.setattr(kernel, "pre_run_hooks", [
            lambda *args, name=name, **kwargs: launched.setdefault(name, []).append(
                list(guarded))])
    _run_every_kernel(torch.device("cpu"))
    assert set(launched) == set(_kernels())  # every kernel ran, each inside a guard
    assert all(stack == [torch.device("cpu")] for runs in launched.values() for stack in runs)


def test_device_guard_selects_the_tensors_cuda_device():
    from fcos_fast.kernels._common import device_guard

    class OnSecondGpu:  # device_guard looks at .device only; no GPU needed
        device = torch.device("cuda", 1)

    guard = device_guard(OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(device_guard(torch.zeros(1)), contextlib.nullcontext)


@pytest.mark.cuda
def test_kernels_launch_on_the_tensors_device(gpu, monkeypatch):
    """Tensors on the last GPU while the current device is cuda:0 (on a one-GPU machine
    the same check, trivially). Rehearsed on the CPU: every kernel, no device to pick."""
    if not gpu.cuda_only("the current CUDA device"):
        _run_every_kernel(gpu.device)
        return
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    launched = []
    for kernel in _kernels().values():
        monkeypatch.setattr(kernel, "pre_run_hooks", [
            lambda *args, **kwargs: launched.append(torch.cuda.current_device())])
    with torch.cuda.device(0):
        _run_every_kernel(device)
        assert torch.cuda.current_device() == 0
    assert launched and set(launched) == {device.index}
