"""per_class_topk: the reference against a per-class sort loop, backends against it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcos_fast import ops
from tests.ops._cases import backend_matrix, interpreted

BACKENDS = backend_matrix()


def loop_per_class(scores: torch.Tensor, k: int, thresh: float):
    """The semantics spelled out: one stable sort per class."""
    out_scores, out_points, out_classes = [], [], []
    for c in range(scores.shape[1]):
        column = scores[:, c]
        candidates = torch.nonzero(column > thresh).flatten()
        order = torch.argsort(column[candidates], descending=True, stable=True)[:k]
        out_scores.append(column[candidates[order]])
        out_points.append(candidates[order])
        out_classes.append(torch.full((order.numel(),), c, dtype=torch.int64))
    if not out_scores:
        return scores.new_zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(
            0, dtype=torch.int64)
    return torch.cat(out_scores), torch.cat(out_points), torch.cat(out_classes)


def _scores(seed, n, c, dtype=torch.float32, ties=False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, c, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: many ties, broken by the lower point index
        scores = (scores * 8).floor() / 8
    return scores.to(dtype)


def _assert_equal(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert torch.equal(g.cpu(), e), (g, e)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), c=st.integers(0, 12),
       k=st.integers(0, 400), thresh=st.floats(-0.1, 1.0), ties=st.booleans())
def test_reference_matches_per_class_loop(seed, n, c, k, thresh, ties):
    scores = _scores(seed, n, c, ties=ties)
    _assert_equal(ops.per_class_topk(scores, k, thresh, backend="reference"),
                  loop_per_class(scores, k, thresh))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 300), thresh=st.floats(0.0, 0.99),
       ties=st.booleans())
def test_backend_matches_reference(backend, device, dtype, seed, k, thresh, ties):
    n, c = (50, 5) if interpreted(backend, device) else (2000, 20)
    scores = _scores(seed, n, c, dtype, ties)
    expected = ops.per_class_topk(scores, k, thresh, backend="reference")
    _assert_equal(ops.per_class_topk(scores.to(device), k, thresh, backend=backend), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fcos_sized_case(backend, device):
    n, c, k = (300, 6, 50) if interpreted(backend, device) else (17000, 80, 1000)
    scores = torch.sigmoid(torch.randn(n, c, dtype=torch.float64) * 2 - 3).float()
    expected = loop_per_class(scores, k, 0.05)
    _assert_equal(ops.per_class_topk(scores.to(device), k, 0.05, backend=backend), expected)


def _named_cases():
    return {
        "no_points": (torch.zeros(0, 4), 10, 0.1),
        "no_classes": (torch.zeros(7, 0), 10, 0.1),
        "k_zero": (torch.rand(20, 3), 0, 0.1),
        "k_larger_than_points": (torch.rand(9, 3), 100, 0.2),
        "nothing_above_threshold": (torch.rand(20, 3) * 0.5, 5, 0.5),
        "score_equal_to_threshold_is_out": (torch.tensor([[0.5, 0.6], [0.5, 0.4]]), 5, 0.5),
        "all_tied": (torch.full((12, 2), 0.7), 5, 0.1),
        "nan_scores_never_selected": (torch.tensor([[float("nan"), 0.9], [0.8, float("nan")],
                                                    [0.85, 0.95], [float("nan"), 0.2]]), 1, 0.1),
        "infinite_scores": (torch.tensor([[float("inf"), 0.3], [float("-inf"), 0.4]]), 5, 0.0),
        "negative_threshold": (torch.randn(30, 4), 6, -0.5),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_named_cases()))
def test_named_cases(backend, device, name):
    scores, k, thresh = _named_cases()[name]
    expected = loop_per_class(scores, k, thresh)
    _assert_equal(ops.per_class_topk(scores.to(device), k, thresh, backend=backend), expected)
    if name == "nan_scores_never_selected":
        assert expected[1].tolist() == [2, 2] and expected[2].tolist() == [0, 1]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, device, dtype):
    scores = _scores(5, 64, 4, dtype=dtype, ties=True)
    expected = loop_per_class(scores.float(), 10, 0.3)
    got = ops.per_class_topk(scores.to(device), 10, 0.3, backend=backend)
    assert got[0].dtype == dtype
    _assert_equal((got[0].float(), got[1], got[2]), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous(backend, device):
    scores = _scores(6, 40, 6)
    transposed = scores.t().contiguous().t()
    assert not transposed.is_contiguous()
    _assert_equal(ops.per_class_topk(transposed.to(device), 7, 0.2, backend=backend),
                  loop_per_class(scores, 7, 0.2))


def _bad_calls(device):
    scores = torch.rand(10, 3, device=device)
    return {
        "scores_1d": ("scores", lambda b: ops.per_class_topk(scores[:, 0], 3, 0.1, backend=b)),
        "scores_int": ("scores", lambda b: ops.per_class_topk(scores.long(), 3, 0.1, backend=b)),
        "k_negative": ("k", lambda b: ops.per_class_topk(scores, -1, 0.1, backend=b)),
        "k_float": ("k", lambda b: ops.per_class_topk(scores, 2.5, 0.1, backend=b)),
        "thresh_nan": ("score_thresh", lambda b: ops.per_class_topk(scores, 3, float("nan"),
                                                                   backend=b)),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_bad_calls("cpu")))
def test_bad_inputs_raise_value_error_naming_the_argument(backend, device, name):
    argument, call = _bad_calls(device)[name]
    with pytest.raises(ValueError, match=argument):
        call(backend)
