"""per_class_topk_padded: the dynamic per_class_topk's entries in fixed-size tables.

The reference against the per-class sort loop of test_per_class_topk.py, every backend
against the reference, on that file's matrix (random, ties, named edge cases with NaN and
inf, half precision, non-contiguous, bad inputs), plus the padding itself and the static
shapes under torch.compile and torch.export.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcos_fast import _extension, ops
from tests.ops._cases import backend_matrix, interpreted
from tests.ops.test_per_class_topk import _named_cases, _scores, loop_per_class

BACKENDS = backend_matrix()


def padded(scores: torch.Tensor, k: int, thresh: float):
    """The contract spelled out: the per-class loop's entries, padded with -inf and -1."""
    num_points, num_classes = scores.shape
    slots = min(k, num_points)
    top_scores = torch.full((num_classes, slots), float("-inf"), dtype=scores.dtype)
    top_index = torch.full((num_classes, slots), -1, dtype=torch.int64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    found_scores, found_points, found_classes = loop_per_class(scores, k, thresh)
    for c in range(num_classes):
        mine = found_classes == c
        n = int(mine.sum())
        top_scores[c, :n], top_index[c, :n], counts[c] = found_scores[mine], found_points[mine], n
    return top_scores, top_index, counts


def _assert_equal(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, e.dtype, g.shape, e.shape)
        assert torch.equal(g.cpu(), e), (g, e)
    # -0.0 stays -0.0: the input's own values
    assert torch.equal(torch.signbit(got[0].cpu()), torch.signbit(expected[0]))


def _run(backend, device, scores, k, thresh):
    return ops.per_class_topk_padded(scores.to(device), k, thresh, backend=backend)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), c=st.integers(0, 12),
       k=st.integers(0, 400), thresh=st.floats(-0.1, 1.0), ties=st.booleans())
def test_reference_matches_per_class_loop(seed, n, c, k, thresh, ties):
    scores = _scores(seed, n, c, ties=ties)
    _assert_equal(_run("reference", "cpu", scores, k, thresh), padded(scores, k, thresh))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 300), thresh=st.floats(0.0, 0.99),
       ties=st.booleans())
def test_reference_rows_are_the_dynamic_ops_entries(seed, k, thresh, ties):
    """Trimmed by the counts, class after class, the tables are ops.per_class_topk."""
    scores = _scores(seed, 500, 7, ties=ties)
    top_scores, top_index, counts = _run("reference", "cpu", scores, k, thresh)
    used = torch.arange(top_index.shape[1]) < counts[:, None]
    dynamic = ops.per_class_topk(scores, k, thresh, backend="reference")
    classes = torch.arange(7)[:, None].expand_as(top_index)
    _assert_equal((top_scores[used], top_index[used], classes[used]), dynamic)
    assert (top_index[~used] == -1).all() and (top_scores[~used] == float("-inf")).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 300), thresh=st.floats(0.0, 0.99),
       ties=st.booleans())
def test_backend_matches_reference(backend, device, dtype, seed, k, thresh, ties):
    n, c = (50, 5) if interpreted(backend, device) else (2000, 20)
    scores = _scores(seed, n, c, dtype, ties)
    _assert_equal(_run(backend, device, scores, k, thresh),
                  _run("reference", "cpu", scores, k, thresh))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("k", [100, 1000, 5000])  # Triton: its register list, and its sort path
def test_fcos_sized_case(backend, device, k):
    n, c = 17000, 80
    if interpreted(backend, device):  # the sort path (k > 4096) runs no kernel: full k
        n, c, k = (5000, 6, k) if k > 4096 else (300, 6, k // 20)
    scores = torch.sigmoid(torch.randn(n, c, dtype=torch.float64) * 2 - 3).float()
    scores[::89, 5] = -0.0
    _assert_equal(_run(backend, device, scores, k, -0.01 if k > 1000 else 0.05),
                  padded(scores, k, -0.01 if k > 1000 else 0.05))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_named_cases()))
def test_named_cases(backend, device, name):
    scores, k, thresh = _named_cases()[name]
    expected = padded(scores, k, thresh)
    _assert_equal(_run(backend, device, scores, k, thresh), expected)
    if name == "nan_scores_never_selected":
        assert expected[1].tolist() == [[2], [2]] and expected[2].tolist() == [1, 1]
    if name == "no_points":
        assert expected[0].shape == (4, 0) and expected[2].tolist() == [0, 0, 0, 0]
    if name == "no_classes":
        assert expected[0].shape == (0, 7) and expected[2].shape == (0,)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_and_returned_in_float32(backend, device, dtype):
    scores = _scores(5, 64, 4, dtype=dtype, ties=True)
    got = _run(backend, device, scores, 10, 0.3)
    assert got[0].dtype == torch.float32
    _assert_equal(got, padded(scores.float(), 10, 0.3))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous(backend, device):
    scores = _scores(6, 40, 6)
    transposed = scores.t().contiguous().t()
    assert not transposed.is_contiguous()
    _assert_equal(_run(backend, device, transposed, 7, 0.2), padded(scores, 7, 0.2))


def _bad_calls(device):
    scores = torch.rand(10, 3, device=device)
    call = lambda s=scores, k=3, t=0.1: (  # noqa: E731
        lambda b: ops.per_class_topk_padded(s, k, t, backend=b))
    return {
        "scores_1d": ("scores", call(s=scores[:, 0])),
        "scores_3d": ("scores", call(s=scores[None])),
        "scores_int": ("scores", call(s=scores.long())),
        "scores_not_tensor": ("scores", call(s=scores.tolist())),
        "k_negative": ("k", call(k=-1)),
        "k_float": ("k", call(k=2.5)),
        "thresh_nan": ("score_thresh", call(t=float("nan"))),
        "thresh_string": ("score_thresh", call(t="0.1")),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_bad_calls("cpu")))
def test_bad_inputs_raise_input_error_naming_the_argument(backend, device, name):
    argument, call = _bad_calls(device)[name]
    with pytest.raises(ValueError, match=argument) as raised:
        call(backend)
    assert isinstance(raised.value, ops.InputError) and isinstance(raised.value, RuntimeError)


# ---------------------------------------------------------------- graphs

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compiles_fullgraph_with_static_shapes(backend, device):
    """fullgraph without capture_dynamic_output_shape_ops: no data-dependent shape."""
    torch._dynamo.reset()
    scores = _scores(2, 40, 3, ties=True).to(device)

    def run(s):
        top_scores, top_index, counts = ops.per_class_topk_padded(s, 8, 0.2, backend=backend)
        return top_scores * 2, top_index + 1, counts

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(scores), run(scores), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.skipif(not _extension.NATIVE_AVAILABLE,
                    reason=_extension.NATIVE_ERROR or "fcos_fast._C has no CPU kernels")
def test_exports_with_a_symbolic_number_of_points():
    """The fake gives [C, min(k, N)]: with N dynamic, K follows it."""

    class Top(torch.nn.Module):
        def forward(self, s):
            return ops.per_class_topk_padded(s, 30, 0.2)

    points = torch.export.Dim("points", min=2, max=10_000)
    program = torch.export.export(Top(), (_scores(3, 100, 4),), dynamic_shapes=({0: points},))
    for n in (10, 100, 500):
        scores = _scores(n, n, 4)
        _assert_equal(program.module()(scores), padded(scores, 30, 0.2))
