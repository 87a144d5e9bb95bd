"""batched_nms_padded: the reference against torchvision and the dynamic ops, backends
against the reference, on the matrix of test_nms.py (random, ties, planted threshold,
empty, NaN, dtypes, non-contiguous, bad inputs), plus what is particular to segments:
counts 0 and L, unsorted and garbage-padded slots, categories within a segment, static
shapes under torch.compile and torch.export."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fcos_fast import _extension, ops
from fcos_fast.ops.reference import batched_nms_padded as reference
from tests.ops._cases import backend_matrix, clustered_boxes, interpreted
from tests.ops.test_nms import _named_cases as nms_named_cases

BACKENDS = backend_matrix()


def _segments(seed: int, num_segments: int, length: int, dtype=torch.float32, *,
              categories: int = 1, tied: bool = False, distinct: bool = True,
              counts: torch.Tensor | None = None):
    """``boxes [S, L, 4], scores [S, L], counts [S], idxs [S, L]``: clustered boxes (NMS has
    work), unsorted slots, random counts (0 and L among them) unless given, and each unused
    slot holding the box of the slot before it with a score above every used one: a
    backend that looked at it would suppress that box."""
    g = torch.Generator().manual_seed(seed)
    n = num_segments * length
    boxes = clustered_boxes(n, clusters=max(n // 30, 1), dtype=torch.float64, generator=g)
    if distinct:  # torchvision orders equal scores by an unstable sort
        scores = (torch.randperm(n, generator=g).double() + 1) / (n + 1)
    else:
        scores = torch.rand(n, generator=g, dtype=torch.float64)
    if tied:
        scores = (scores * 6).floor() / 6
    if counts is None:
        counts = torch.randint(0, length + 1, (num_segments,), generator=g)
        if num_segments > 2:
            counts[0], counts[1] = 0, length
    idxs = torch.randint(0, categories, (num_segments, length), generator=g)
    boxes, scores = boxes.view(num_segments, length, 4), scores.view(num_segments, length)
    unused = torch.arange(length) >= counts[:, None]
    boxes = torch.where(unused[..., None], boxes.roll(1, dims=1), boxes)
    scores = torch.where(unused, 2.0, scores)
    return boxes.to(dtype), scores.to(dtype), counts, idxs


def torchvision_keep(boxes, scores, counts, iou_threshold, idxs=None) -> torch.Tensor:
    """The contract spelled out: torchvision's per-class NMS of each segment's used slots."""
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for s in range(scores.shape[0]):
        n = int(counts[s])
        category = idxs[s, :n] if idxs is not None else torch.zeros(n, dtype=torch.int64)
        kept = torchvision.ops.boxes._batched_nms_vanilla(boxes[s, :n], scores[s, :n], category,
                                                          iou_threshold)
        keep[s, kept] = True
    return keep


def dynamic_keep(boxes, scores, counts, iou_threshold, idxs=None, backend="reference"):
    """``ops.batched_nms`` on every used slot at once, a category per (segment, idx)."""
    num_segments, length = scores.shape
    used = torch.arange(length) < counts[:, None]
    category = torch.arange(num_segments)[:, None].expand(-1, length).clone()
    if idxs is not None:
        category = category * (int(idxs.max()) + 1 if idxs.numel() else 1) + idxs
    flat = torch.nonzero(used.flatten()).flatten()
    kept = ops.batched_nms(boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat],
                           category.reshape(-1)[flat], iou_threshold, backend=backend)
    keep = torch.zeros(num_segments * length, dtype=torch.bool)
    keep[flat[kept]] = True
    return keep.view(num_segments, length)


def _run(backend, device, boxes, scores, counts, threshold, idxs=None, **kwargs):
    keep = ops.batched_nms_padded(boxes.to(device), scores.to(device), counts.to(device),
                                  threshold, None if idxs is None else idxs.to(device),
                                  backend=backend, **kwargs)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    assert keep.device.type == device
    return keep.cpu()


# ---------------------------------------------------------------- reference vs torchvision

@given(seed=st.integers(0, 2**31 - 1), num_segments=st.integers(0, 6), length=st.integers(0, 70),
       threshold=st.floats(0.05, 0.95), categories=st.sampled_from([1, 3]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_reference_matches_torchvision(seed, num_segments, length, threshold, categories, dtype):
    boxes, scores, counts, idxs = _segments(seed, num_segments, length, dtype,
                                            categories=categories)
    idxs = idxs if categories > 1 else None
    expected = torchvision_keep(boxes, scores, counts, threshold, idxs)
    assert torch.equal(reference.batched_nms_padded(boxes, scores, counts, threshold, idxs),
                       expected)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95),
       categories=st.sampled_from([1, 4]))
def test_reference_matches_the_dynamic_op_with_tied_scores(seed, threshold, categories):
    """Ties: the lower slot first, as ops.batched_nms's lower index first."""
    boxes, scores, counts, idxs = _segments(seed, 5, 60, categories=categories, tied=True)
    idxs = idxs if categories > 1 else None
    assert torch.equal(reference.batched_nms_padded(boxes, scores, counts, threshold, idxs),
                       dynamic_keep(boxes, scores, counts, threshold, idxs))


# ---------------------------------------------------------------- backends vs reference

@pytest.mark.parametrize("backend,device", BACKENDS)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95),
       categories=st.sampled_from([1, 3]), tied=st.booleans())
def test_backend_matches_reference(backend, device, seed, threshold, categories, tied):
    num_segments, length = (3, 40) if interpreted(backend, device) else (12, 150)
    boxes, scores, counts, idxs = _segments(seed, num_segments, length, categories=categories,
                                            tied=tied)
    idxs = idxs if categories > 1 else None
    expected = reference.batched_nms_padded(boxes, scores, counts, threshold, idxs)
    assert torch.equal(_run(backend, device, boxes, scores, counts, threshold, idxs), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("categories", [1, 5])
def test_matches_the_dynamic_op_at_size(backend, device, categories):
    """Segments longer than one and several mask words (64, 65, 129 boxes, ...)."""
    if interpreted(backend, device):
        num_segments, length = 3, 130
    else:
        num_segments, length = 20, 700
    counts = torch.randint(0, length + 1, (num_segments,),
                           generator=torch.Generator().manual_seed(1))
    counts[:3] = torch.tensor([0, length, 65])
    boxes, scores, counts, idxs = _segments(7, num_segments, length, categories=categories,
                                            counts=counts)
    idxs = idxs if categories > 1 else None
    expected = dynamic_keep(boxes, scores, counts, 0.5, idxs,
                            backend="native" if _extension.NATIVE_AVAILABLE else "reference")
    assert torch.equal(_run(backend, device, boxes, scores, counts, 0.5, idxs), expected)
    assert torch.equal(expected, torchvision_keep(boxes, scores, counts, 0.5, idxs))


def _padded_named_case(name):
    """test_nms.py's named case as one segment of its boxes plus two garbage slots, and a
    second segment holding the same boxes reversed."""
    boxes, scores = nms_named_cases()[name]
    n = boxes.shape[0]
    garbage = torch.tensor([[0.0, 0, 4, 4], [1, 1, 1, 1]])
    first = torch.cat([boxes, garbage])
    second = torch.cat([boxes.flip(0), garbage])
    padded_scores = torch.cat([scores, torch.tensor([5.0, 5.0])])
    return (torch.stack([first, second]),
            torch.stack([padded_scores, torch.cat([scores.flip(0), torch.tensor([5.0, 5.0])])]),
            torch.tensor([n, n]))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(nms_named_cases()))
@pytest.mark.parametrize("threshold", [0.5, 0.49])
def test_named_cases(backend, device, name, threshold):
    boxes, scores, counts = _padded_named_case(name)
    n = int(counts[0])
    for idxs in (None, (torch.arange(n + 2) % 2)[None].expand(2, -1)):
        got = _run(backend, device, boxes, scores, counts, threshold, idxs)
        assert torch.equal(got, torchvision_keep(boxes, scores, counts, threshold, idxs))
        if name == "iou_exactly_at_threshold":  # kept at 0.5, suppressed at 0.49
            assert got[0].tolist() == [True, threshold == 0.5 or idxs is not None, False, False]


def planted_pairs(num_segments: int, dtype=torch.float32):
    """In every segment a pair at IoU exactly 0.5 (512 / 1024), in either slot order, and a
    higher-scoring far-away box; all segments at the same place. Returns ``boxes, scores,
    counts`` and the keep mask at threshold 0.49 (at 0.5 all are kept)."""
    square, half, far = [16.0, 16.0, 48.0, 48.0], [16.0, 16.0, 48.0, 32.0], [90, 90, 99, 99.0]
    flip = torch.arange(num_segments) % 2 == 1
    pair = torch.tensor([far, square, half], dtype=dtype).expand(num_segments, -1, -1)
    boxes = torch.where(flip[:, None, None], pair[:, [0, 2, 1]], pair)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=dtype).expand(num_segments, -1)
    scores = torch.where(flip[:, None], scores[:, [0, 2, 1]], scores)
    kept_at_049 = torch.where(flip[:, None], torch.tensor([True, False, True]),
                              torch.tensor([True, True, False]))
    return boxes, scores, torch.full((num_segments,), 3), kept_at_049


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planted_threshold_pairs_in_many_segments(backend, device, dtype):
    """Both of a pair at IoU exactly 0.5 kept at 0.5, the lower one dropped at 0.49, and
    never anything across segments (they all sit at the same place)."""
    boxes, scores, counts, kept_at_049 = planted_pairs(
        8 if interpreted(backend, device) else 300, dtype)
    assert torchvision.ops.box_iou(boxes[0, 1:2].double(), boxes[0, 2:].double()).item() == 0.5
    assert _run(backend, device, boxes, scores, counts, 0.5).all()
    assert torch.equal(_run(backend, device, boxes, scores, counts, 0.49), kept_at_049)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_unsorted_slots_are_sorted_inside(backend, device):
    """Shuffling the used slots of a segment shuffles the keep mask the same way."""
    boxes, scores, counts, idxs = _segments(3, 4, 50, categories=2,
                                            counts=torch.full((4,), 50))
    expected = reference.batched_nms_padded(boxes, scores, counts, 0.5, idxs)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    got = _run(backend, device, boxes[:, perm], scores[:, perm], counts, 0.5, idxs[:, perm])
    assert torch.equal(got, expected[:, perm])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0), (1, 1)])
def test_empty_and_tiny(backend, device, shape):
    num_segments, length = shape
    boxes = torch.rand(num_segments, length, 4) * 10
    boxes[..., 2:] += boxes[..., :2]
    scores = torch.rand(num_segments, length)
    for counts in (torch.zeros(num_segments, dtype=torch.int64),
                   torch.full((num_segments,), length)):
        got = _run(backend, device, boxes, scores, counts, 0.5)
        assert torch.equal(got, counts[:, None] > torch.arange(length))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_one_segment_equals_nms(backend, device):
    length = 64 if interpreted(backend, device) else 500
    boxes, scores, counts, _ = _segments(11, 1, length, counts=torch.tensor([length]))
    got = _run(backend, device, boxes, scores, counts, 0.6)
    kept = torch.nonzero(got[0]).flatten()
    expected = torchvision.ops.nms(boxes[0], scores[0], 0.6)
    assert torch.equal(kept[scores[0, kept].argsort(descending=True)], expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(backend, device, dtype):
    boxes, scores, counts, idxs = _segments(4, 4, 40, categories=2, distinct=False)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    expected = reference.batched_nms_padded(boxes.float(), scores.float(), counts, 0.5, idxs)
    assert torch.equal(_run(backend, device, boxes, scores, counts, 0.5, idxs), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_and_other_integer_dtypes(backend, device):
    boxes, scores, counts, idxs = _segments(5, 4, 30, categories=3)
    expected = reference.batched_nms_padded(boxes, scores, counts, 0.4, idxs)
    wide = torch.zeros(4, 30, 8)
    wide[..., ::2] = boxes
    strided_scores = torch.stack([scores, scores], -1)[..., 1]
    strided_idxs = idxs.t().contiguous().t()
    assert not (wide[..., ::2].is_contiguous() or strided_scores.is_contiguous()
                or strided_idxs.is_contiguous())
    got = _run(backend, device, wide[..., ::2], strided_scores, counts.to(torch.int32), 0.4,
               strided_idxs.to(torch.int16))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_padding_may_hold_nan_with_validation_on(backend, device):
    """Only the used slots are checked: NaN and inf in the padding are fine."""
    boxes, scores, counts, _ = _segments(6, 4, 20, counts=torch.tensor([0, 20, 5, 12]))
    unused = torch.arange(20) >= counts[:, None]
    boxes = torch.where(unused[..., None], float("nan"), boxes)
    scores = torch.where(unused, float("nan"), scores)
    expected = torchvision_keep(boxes, scores, counts, 0.5)
    assert torch.equal(_run(backend, device, boxes, scores, counts, 0.5), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("switch", ["environment", "check_values"])
def test_non_finite_values_without_validation(backend, device, switch, monkeypatch):
    """NaN/inf boxes and NaN scores in used slots, and counts out of range: no crash, only
    used slots kept, and the reference's answer (NaN scores rank first, as torch.sort)."""
    if switch == "environment":
        monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    kwargs = {"check_values": False} if switch == "check_values" else {}
    boxes, scores, counts, idxs = _segments(2, 5, 30, categories=2)
    boxes[:, ::3, 0] = float("nan")
    boxes[:, 1::5, 3] = float("inf")
    boxes[:, 2::7, 1] = float("-inf")
    scores[:, ::4] = float("nan")
    scores[:, 1::6] = float("-inf")
    counts = torch.tensor([-5, 30, 10**9, 7, 0])
    expected = reference.batched_nms_padded(boxes, scores, counts, 0.5, idxs)
    got = _run(backend, device, boxes, scores, counts, 0.5, idxs, **kwargs)
    assert torch.equal(got, expected)
    assert not got[0].any() and not got[3, 7:].any()


# ---------------------------------------------------------------- with per_class_topk_padded

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_postprocess_pipeline_equals_the_dynamic_ops(backend, device):
    """per_class_topk -> batched_nms by class, and the fixed-size pair on [C, K] rows,
    keep the same (class, point) candidates."""
    g = torch.Generator().manual_seed(9)
    n, c, k = (200, 3, 30) if interpreted(backend, device) else (3000, 20, 200)
    scores = torch.rand(n, c, generator=g) ** 3
    point_boxes = clustered_boxes(n, clusters=n // 20, generator=g)
    top_scores, point, label = ops.per_class_topk(scores, k, 0.05, backend="reference")
    kept = ops.batched_nms(point_boxes[point], top_scores, label, 0.5, backend="reference")
    expected = sorted(zip(label[kept].tolist(), point[kept].tolist()))

    top, index, counts = ops.per_class_topk_padded(scores.to(device), k, 0.05, backend=backend)
    boxes = point_boxes.to(device)[index.clamp(min=0)]  # [C, K, 4]; padding: any box
    keep = ops.batched_nms_padded(boxes, top, counts, 0.5, backend=backend).cpu()
    got = sorted(zip(torch.nonzero(keep)[:, 0].tolist(), index.cpu()[keep].tolist()))
    assert got == expected


# ---------------------------------------------------------------- bad inputs

def _bad_calls(device):
    boxes, scores, counts, idxs = (t.to(device) for t in _segments(1, 3, 10, categories=2))
    counts = torch.full((3,), 10, device=device)
    nan_boxes = boxes.clone()
    nan_boxes[1, 3, 2] = float("nan")
    nan_scores = scores.clone()
    nan_scores[2, 0] = float("nan")
    meta = torch.device("meta")

    def call(b=boxes, s=scores, n=counts, t=0.5, i=None):
        return lambda backend: ops.batched_nms_padded(b, s, n, t, i, backend=backend)

    return {
        "boxes_2d": ("boxes", call(b=boxes[0])),
        "boxes_last_dim_5": ("boxes", call(b=torch.zeros(3, 10, 5, device=device))),
        "boxes_int": ("boxes", call(b=boxes.long())),
        "boxes_not_tensor": ("boxes", call(b=boxes.tolist())),
        "scores_shape": ("scores", call(s=scores[:, :5])),
        "scores_1d": ("scores", call(s=scores.flatten())),
        "counts_shape": ("counts", call(n=counts[:2])),
        "counts_float": ("counts", call(n=counts.float())),
        "counts_negative": ("counts", call(n=torch.tensor([3, -1, 2], device=device))),
        "counts_above_length": ("counts", call(n=torch.tensor([3, 11, 2], device=device))),
        "idxs_shape": ("idxs", call(i=idxs[:, :4])),
        "idxs_float": ("idxs", call(i=idxs.float())),
        "device_mismatch": ("counts", call(n=counts.to(meta))),
        "nan_box": ("boxes", call(b=nan_boxes)),
        "nan_score": ("scores", call(s=nan_scores)),
        "nan_threshold": ("iou_threshold", call(t=float("nan"))),
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_bad_calls("cpu")))
def test_bad_inputs_raise_input_error_naming_the_argument(backend, device, name):
    argument, call = _bad_calls(device)[name]
    with pytest.raises(ValueError, match=argument) as raised:
        call(backend)
    assert isinstance(raised.value, ops.InputError) and isinstance(raised.value, RuntimeError)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- graphs

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compiles_fullgraph_with_static_shapes(backend, device):
    """No data-dependent shape, no graph break: fullgraph without
    capture_dynamic_output_shape_ops (a nonzero or .item() in the launcher or the
    reference would fail here)."""
    torch._dynamo.reset()
    boxes, scores, counts, idxs = (t.to(device) for t in _segments(8, 3, 12, categories=2))

    def run(b, s, n, i):
        return (ops.batched_nms_padded(b, s, n, 0.5, backend=backend),
                ops.batched_nms_padded(b, s, n, 0.5, i, backend=backend))

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(boxes, scores, counts, idxs),
                             run(boxes, scores, counts, idxs), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.skipif(not _extension.NATIVE_AVAILABLE,
                    reason=_extension.NATIVE_ERROR or "fcos_fast._C has no CPU kernels")
def test_exports_and_compiles_with_inductor():
    boxes, scores, counts, idxs = _segments(10, 4, 30, categories=3)

    class Suppress(torch.nn.Module):
        def forward(self, b, s, n, i):
            return ops.batched_nms_padded(b, s, n, 0.5, i)

    expected = reference.batched_nms_padded(boxes, scores, counts, 0.5, idxs)
    program = torch.export.export(Suppress(), (boxes, scores, counts, idxs))
    assert torch.equal(program.module()(boxes, scores, counts, idxs), expected)
    torch._dynamo.reset()
    compiled = torch.compile(Suppress(), fullgraph=True)
    assert torch.equal(compiled(boxes, scores, counts, idxs), expected)
