"""nms / batched_nms: reference against torchvision, every backend against the reference."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fcos_fast import ops
from fcos_fast.ops.reference import nms as reference_nms
from tests.ops._cases import backend_matrix, clustered_boxes, interpreted, random_boxes

BACKENDS = backend_matrix()


def _case(seed: int, n: int, dtype=torch.float32, clusters: int = 6):
    g = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(n, clusters=clusters, dtype=dtype, generator=g)
    # Distinct scores: torchvision's batched_nms merges classes with an unstable sort,
    # so only distinct scores have one right order to compare against.
    scores = torch.randperm(n, generator=g).to(dtype) / max(n, 1)
    idxs = torch.randint(0, 4, (n,), generator=g)
    return boxes, scores, idxs


# ---------------------------------------------------------------- reference vs torchvision

@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300),
       threshold=st.floats(0.05, 0.95), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_reference_nms_matches_torchvision(seed, n, threshold, dtype):
    boxes, scores, _ = _case(seed, n, dtype)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(reference_nms.nms(boxes, scores, threshold), expected)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), threshold=st.floats(0.05, 0.95))
def test_reference_batched_nms_matches_torchvision(seed, n, threshold):
    boxes, scores, idxs = _case(seed, n)
    # The per-class ("vanilla") path is exact; torchvision's coordinate-offset trick,
    # which it uses below 1000 boxes on CPU, can round IoUs differently.
    expected = torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, threshold)
    assert torch.equal(reference_nms.batched_nms(boxes, scores, idxs, threshold), expected)


def test_reference_nms_tied_scores_keep_lower_index_first():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5], [40, 40, 50, 50.]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5])
    keep = reference_nms.nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 0, 3]
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------- backends vs reference

@pytest.mark.parametrize("backend,device", BACKENDS)
@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95))
def test_nms_backend_matches_reference(backend, device, seed, threshold):
    n = 40 if interpreted(backend, device) else 500
    boxes, scores, idxs = _case(seed, n)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    expected = ops.nms(boxes.cpu(), scores.cpu(), threshold, backend="reference")
    got = ops.nms(boxes, scores, threshold, backend=backend)
    assert got.dtype == torch.int64 and got.device.type == device
    assert torch.equal(got.cpu(), expected)
    expected = ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), threshold,
                               backend="reference")
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold, backend=backend).cpu(),
                       expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_matches_torchvision_at_size(backend, device):
    if interpreted(backend, device):
        n = 64
    else:
        n = 3000
    boxes, scores, idxs = _case(7, n, clusters=40)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    assert torch.equal(ops.nms(boxes, scores, 0.5, backend=backend).cpu(),
                       torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5))
    assert torch.equal(
        ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).cpu(),
        torchvision.ops.boxes._batched_nms_vanilla(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))


def _named_cases():
    square = [0.0, 0.0, 4.0, 4.0]
    half = [0.0, 0.0, 4.0, 2.0]  # IoU with `square` is exactly 0.5
    return {
        "empty": (torch.zeros(0, 4), torch.zeros(0)),
        "one_box": (torch.tensor([square]), torch.tensor([0.3])),
        "identical_boxes": (torch.tensor([square] * 5), torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5])),
        "zero_area_boxes": (torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2],
                                          [5, 5, 5, 9]]), torch.tensor([0.9, 0.8, 0.7, 0.6])),
        "iou_exactly_at_threshold": (torch.tensor([square, half]), torch.tensor([0.9, 0.8])),
        "huge_coordinates": (torch.tensor([[1e6, 1e6, 1e6 + 512, 1e6 + 512],
                                           [1e6 + 8, 1e6, 1e6 + 520, 1e6 + 512],
                                           [-1e6, -1e6, -1e6 + 4, -1e6 + 4]]),
                             torch.tensor([0.5, 0.6, 0.7])),
        "touching_edges": (torch.tensor([[0.0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4]]),
                           torch.tensor([0.3, 0.2, 0.1])),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_named_cases()))
@pytest.mark.parametrize("threshold", [0.5, 0.49])
def test_nms_named_cases(backend, device, name, threshold):
    boxes, scores = _named_cases()[name]
    expected = torchvision.ops.nms(boxes, scores, threshold)
    got = ops.nms(boxes.to(device), scores.to(device), threshold, backend=backend)
    assert torch.equal(got.cpu(), expected)
    idxs = torch.arange(boxes.shape[0]) % 2
    expected = torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, threshold)
    got = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), threshold,
                          backend=backend)
    assert torch.equal(got.cpu(), expected)


def test_threshold_plant_is_exact():
    """The planted pair really sits at IoU 0.5: kept at 0.5, suppressed at 0.49."""
    boxes, scores = _named_cases()["iou_exactly_at_threshold"]
    assert torchvision.ops.box_iou(boxes[:1], boxes[1:]).item() == 0.5
    assert ops.nms(boxes, scores, 0.5, backend="reference").tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.49, backend="reference").tolist() == [0]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(backend, device, dtype):
    boxes, scores, idxs = _case(3, 60, dtype=torch.float32)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    expected = ops.nms(boxes.float(), scores.float(), 0.5, backend="reference")
    got = ops.nms(boxes.to(device), scores.to(device), 0.5, backend=backend)
    assert torch.equal(got.cpu(), expected)
    expected = ops.batched_nms(boxes.float(), scores.float(), idxs, 0.5, backend="reference")
    got = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5,
                          backend=backend)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    boxes, scores, idxs = _case(5, 50)
    wide = torch.zeros(50, 8, device=device)
    wide[:, ::2] = boxes.to(device)
    strided_boxes = wide[:, ::2]
    strided_scores = torch.stack([scores, scores], 1).to(device)[:, 1]
    assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
    got = ops.nms(strided_boxes, strided_scores, 0.4, backend=backend)
    assert torch.equal(got.cpu(), torchvision.ops.nms(boxes, scores, 0.4))
    strided_idxs = torch.stack([idxs, idxs], 1).to(device)[:, 0]
    got = ops.batched_nms(strided_boxes, strided_scores, strided_idxs, 0.4, backend=backend)
    assert torch.equal(got.cpu(),
                       torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, 0.4))


# ---------------------------------------------------------------- no boxes

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("boxes_shape", [(0,), (0, 4)])
def test_batched_nms_of_no_boxes_is_empty_like_torchvision(backend, device, boxes_shape):
    """torchvision returns an empty int64 result for any boxes without elements, even a
    1-D ``torch.empty(0)`` with the other arguments ``None`` (its test_ops.py does so)."""
    boxes = torch.empty(boxes_shape, device=device)
    calls = [
        (boxes, torch.empty(0, device=device),
         torch.empty(0, dtype=torch.int64, device=device), 0.5),
        (boxes, None, None, None),
    ]
    for args in calls:
        expected = torchvision.ops.batched_nms(*(a.cpu() if isinstance(a, torch.Tensor)
                                                 else a for a in args))
        got = ops.batched_nms(*args, backend=backend)
        assert got.dtype == expected.dtype == torch.int64
        assert got.shape == expected.shape == (0,) and got.device.type == device


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_batched_nms_of_no_boxes_still_checks_what_is_given(backend, device):
    empty = torch.empty(0, device=device)
    with pytest.raises(ValueError, match="scores"):
        ops.batched_nms(empty, torch.rand(3, device=device), None, 0.5, backend=backend)
    with pytest.raises(ValueError, match="idxs"):
        ops.batched_nms(empty, None, torch.zeros(0, 2, dtype=torch.int64, device=device),
                        0.5, backend=backend)
    with pytest.raises(ValueError, match="iou_threshold"):
        ops.batched_nms(empty, None, None, "0.5", backend=backend)
    with pytest.raises(ValueError, match="boxes"):  # 1-D boxes with elements stay an error
        ops.batched_nms(torch.rand(4, device=device), torch.rand(1, device=device),
                        torch.zeros(1, dtype=torch.int64, device=device), 0.5,
                        backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_of_1d_empty_boxes_raises_like_torchvision(backend, device):
    """torchvision's nms rejects 1-D boxes, empty or not ("boxes should be a 2d tensor",
    a RuntimeError); ours raises InputError, which is one."""
    with pytest.raises(RuntimeError):
        torchvision.ops.nms(torch.empty(0), torch.empty(0), 0.5)
    with pytest.raises(RuntimeError, match="boxes"):
        ops.nms(torch.empty(0, device=device), torch.empty(0, device=device), 0.5,
                backend=backend)


# ---------------------------------------------------------------- bad inputs

def _bad_calls(device):
    boxes, scores, idxs = (t.to(device) for t in _case(1, 10))
    nan_boxes = boxes.clone()
    nan_boxes[3, 2] = float("nan")
    inf_boxes = boxes.clone()
    inf_boxes[0, 0] = float("inf")
    meta = torch.device("meta")
    return {
        "boxes_1d": ("boxes", lambda b: ops.nms(boxes[:, 0], scores, 0.5, backend=b)),
        "boxes_last_dim_5": ("boxes", lambda b: ops.nms(torch.zeros(10, 5, device=device),
                                                       scores, 0.5, backend=b)),
        "boxes_int": ("boxes", lambda b: ops.nms(boxes.long(), scores, 0.5, backend=b)),
        "boxes_not_tensor": ("boxes", lambda b: ops.nms(boxes.tolist(), scores, 0.5, backend=b)),
        "scores_2d": ("scores", lambda b: ops.nms(boxes, scores[:, None], 0.5, backend=b)),
        "length_mismatch": ("scores", lambda b: ops.nms(boxes, scores[:5], 0.5, backend=b)),
        "device_mismatch": ("scores", lambda b: ops.nms(boxes, scores.to(meta), 0.5, backend=b)),
        "nan_box": ("boxes", lambda b: ops.nms(nan_boxes, scores, 0.5, backend=b)),
        "inf_box": ("boxes", lambda b: ops.nms(inf_boxes, scores, 0.5, backend=b)),
        "nan_threshold": ("iou_threshold", lambda b: ops.nms(boxes, scores, float("nan"),
                                                             backend=b)),
        "idxs_float": ("idxs", lambda b: ops.batched_nms(boxes, scores, idxs.float(), 0.5,
                                                         backend=b)),
        "idxs_length": ("idxs", lambda b: ops.batched_nms(boxes, scores, idxs[:3], 0.5,
                                                          backend=b)),
        "batched_nan_box": ("boxes", lambda b: ops.batched_nms(nan_boxes, scores, idxs, 0.5,
                                                               backend=b)),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_bad_calls("cpu")))
def test_bad_inputs_raise_value_error_naming_the_argument(backend, device, name):
    argument, call = _bad_calls(device)[name]
    with pytest.raises(ValueError, match=argument) as raised:
        call(backend)
    # Also a RuntimeError, which torchvision's C++ checks raise: drop-in except clauses.
    assert isinstance(raised.value, ops.InputError) and isinstance(raised.value, RuntimeError)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("switch", ["environment", "check_values"])
def test_non_finite_boxes_without_validation_do_not_crash(backend, device, switch,
                                                          monkeypatch):
    if switch == "environment":
        monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    kwargs = {"check_values": False} if switch == "check_values" else {}
    boxes, scores, idxs = (t.to(device) for t in _case(2, 30))
    boxes[::3, 0] = float("nan")
    boxes[1::5, 3] = float("inf")
    boxes[2::7, 1] = float("-inf")
    for keep in (ops.nms(boxes, scores, 0.5, backend=backend, **kwargs),
                 ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend, **kwargs)):
        # Garbage in, but indices stay in range, unique, and in score order.
        assert keep.dtype == torch.int64
        assert keep.numel() == keep.unique().numel()
        assert bool(((keep >= 0) & (keep < 30)).all())
        assert bool((scores[keep][:-1] >= scores[keep][1:]).all())
