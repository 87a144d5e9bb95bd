"""fcos_assign: the reference against torchvision's FCOS matching code, backends against it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.baselines import torchvision_fcos_matching as torchvision_matching
from benchmarks.memory import cpu_peak_supported, peak_extra_bytes
from fcos_fast import ops
from tests.ops._cases import backend_matrix, fcos_points, interpreted, padded_gt, random_boxes

BACKENDS = backend_matrix()


def _images(seed: int, num_images: int, max_boxes: int, image_size, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    boxes = []
    for _ in range(num_images):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        b = random_boxes(n, scale=float(max(height, width)), min_size=4.0, dtype=torch.float64,
                         generator=g)
        boxes.append(b.to(dtype))
    return boxes


def _assert_same_or_float32_area_tie(ours, theirs, boxes_per_image):
    """torchvision ranks matches by ``1e8 - area`` in float32, whose spacing near 1e8 is 8:
    areas within 8 of each other tie there and it may pick either. Everywhere else the
    answers must be identical."""
    for image, boxes in enumerate(boxes_per_image):
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()
        differ = torch.nonzero(ours[image] != theirs[image]).flatten()
        for p in differ.tolist():
            a, b = int(ours[image, p]), int(theirs[image, p])
            assert a >= 0 and b >= 0, f"image {image} point {p}: ours {a}, torchvision {b}"
            assert area[a] <= area[b] and area[b] - area[a] <= 16, (
                f"image {image} point {p}: ours {a} (area {area[a]}), torchvision {b} "
                f"(area {area[b]})")


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), max_boxes=st.integers(0, 30),
       height=st.integers(32, 200), width=st.integers(32, 200))
def test_reference_matches_torchvision_matching(seed, max_boxes, height, width):
    points, lower, upper, radius, strides, counts = fcos_points((height, width))
    boxes = _images(seed, 3, max_boxes, (height, width))
    gt, num_gt = padded_gt(boxes)
    ours = ops.fcos_assign(points, lower, upper, radius, gt, num_gt, backend="reference")
    theirs = torchvision_matching(points, strides, counts, boxes)
    assert ours.shape == theirs.shape and ours.dtype == torch.int64
    _assert_same_or_float32_area_tie(ours, theirs, boxes)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1))
def test_backend_matches_reference(backend, device, dtype, seed):
    small = interpreted(backend, device)
    image_size = (40, 56) if small else (256, 320)
    points, lower, upper, radius, _, _ = fcos_points(image_size, dtype=dtype)
    boxes = _images(seed, 2 if small else 4, 6 if small else 60, image_size, dtype)
    gt, num_gt = padded_gt(boxes)
    expected = ops.fcos_assign(points, lower, upper, radius, gt, num_gt, backend="reference")
    args = (t.to(device) for t in (points, lower, upper, radius, gt, num_gt))
    got = ops.fcos_assign(*args, backend=backend)
    assert got.dtype == torch.int64 and got.device.type == device
    assert torch.equal(got.cpu(), expected)


def _named_cases():
    """(boxes per image, expectation checker) on a 64×64 image."""
    square = [8.0, 8.0, 40.0, 40.0]
    return {
        "no_boxes_at_all": [torch.zeros(0, 4), torch.zeros(0, 4)],
        "one_image_empty": [torch.tensor([square]), torch.zeros(0, 4)],
        "identical_boxes_tie_to_lower_index": [torch.tensor([square, square, square])],
        "equal_areas_tie_to_lower_index": [torch.tensor([[8.0, 8, 40, 24], [8, 8, 24, 40]])],
        "zero_area_boxes": [torch.tensor([[12.0, 12, 12, 30], [20, 20, 20, 20], square])],
        "points_on_box_edges": [torch.tensor([[4.0, 4, 28, 28], [12, 12, 36, 36]])],
        "nested_boxes": [torch.tensor([[0.0, 0, 64, 64], [16, 16, 48, 48], [24, 24, 40, 40]])],
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", list(_named_cases()))
def test_named_cases(backend, device, name):
    points, lower, upper, radius, strides, counts = fcos_points((64, 64))
    boxes = _named_cases()[name]
    gt, num_gt = padded_gt(boxes, slots=max(4, max(b.shape[0] for b in boxes)))
    args = [t.to(device) for t in (points, lower, upper, radius, gt, num_gt)]
    got = ops.fcos_assign(*args, backend=backend).cpu()
    expected = ops.fcos_assign(points, lower, upper, radius, gt, num_gt, backend="reference")
    assert torch.equal(got, expected)
    # And the reference agrees with torchvision's matching wherever areas differ.
    _assert_same_or_float32_area_tie(
        expected, torchvision_matching(points, strides, counts, boxes), boxes)
    if name == "identical_boxes_tie_to_lower_index":
        assert set(expected.unique().tolist()) <= {-1, 0} and (expected == 0).any()
    if name == "points_on_box_edges":
        # Point (4, 4)... lies on the corner of box 0: l = t = 0 is not inside.
        on_edge = (points[:, 0] == 4) | (points[:, 1] == 4) | (points[:, 0] == 28)
        assert not (expected[0][on_edge] == 0).any()
    if name.startswith("no_boxes") or name == "one_image_empty":
        assert (expected[-1] == -1).all()


def test_planted_point_on_edge_is_not_inside():
    """A point exactly on a box side has a zero distance and must not match."""
    points = torch.tensor([[10.0, 20.0], [10.5, 20.0]])
    lower = torch.zeros(2)
    upper = torch.full((2,), float("inf"))
    radius = torch.full((2,), 100.0)
    gt = torch.tensor([[[10.0, 0.0, 30.0, 40.0]]])
    for backend in ops.available_backends("cpu"):
        got = ops.fcos_assign(points, lower, upper, radius, gt, torch.tensor([1]),
                              backend=backend)
        assert got.tolist() == [[-1, 0]], backend


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_scale_range_and_radius_are_strict(backend, device):
    # Point (20, 20) in box (0, 0, 40, 40): l = t = r = b = 20, center offset 0.
    points = torch.tensor([[20.0, 20.0]] * 4)
    lower = torch.tensor([0.0, 20.0, 0.0, 0.0])   # max side 20 > 20 fails in row 1
    upper = torch.tensor([64.0, 64.0, 20.0, 64.0])  # 20 < 20 fails in row 2
    radius = torch.tensor([1.0, 1.0, 1.0, 0.0])   # offset 0 < 0 fails in row 3
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0]]])
    args = [t.to(device) for t in (points, lower, upper, radius, gt, torch.tensor([1]))]
    assert ops.fcos_assign(*args, backend=backend).cpu().tolist() == [[0, -1, -1, -1]]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, device, dtype):
    points, lower, upper, radius, _, _ = fcos_points((48, 64))
    boxes = [b.to(dtype) for b in _images(3, 2, 5, (48, 64))]
    gt, num_gt = padded_gt(boxes)
    expected = ops.fcos_assign(points.to(dtype).float(), lower, upper, radius, gt.float(),
                               num_gt, backend="reference")
    args = [t.to(device) for t in (points.to(dtype), lower.to(dtype), upper, radius.to(dtype),
                                   gt, num_gt)]
    assert torch.equal(ops.fcos_assign(*args, backend=backend).cpu(), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_huge_coordinates(backend, device):
    points, lower, upper, radius, _, _ = fcos_points((64, 64), dtype=torch.float64)
    offset = 1e6
    boxes = [b + offset for b in _images(9, 2, 6, (64, 64), torch.float64)]
    gt, num_gt = padded_gt(boxes)
    args = [points + offset, lower, upper, radius, gt, num_gt]
    expected = ops.fcos_assign(*args, backend="reference")
    assert (expected >= 0).any()
    got = ops.fcos_assign(*[t.to(device) for t in args], backend=backend)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    points, lower, upper, radius, _, _ = fcos_points((48, 48))
    boxes = _images(4, 2, 5, (48, 48))
    gt, num_gt = padded_gt(boxes)
    expected = ops.fcos_assign(points, lower, upper, radius, gt, num_gt, backend="reference")
    points_t = points.t().contiguous().t()
    gt_t = gt.transpose(0, 1).contiguous().transpose(0, 1)
    lower_s = torch.stack([lower, lower], 1)[:, 0]
    assert not (points_t.is_contiguous() or gt_t.is_contiguous() or lower_s.is_contiguous())
    args = [t.to(device) for t in (points_t, lower_s, upper, radius, gt_t, num_gt)]
    assert torch.equal(ops.fcos_assign(*args, backend=backend).cpu(), expected)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_memory_is_linear_not_points_times_boxes(backend):
    """Peak extra memory does not grow with the number of boxes, and stays far below
    torchvision's P×G matching on the same input."""
    if backend not in ops.available_backends("cpu"):
        pytest.skip(f"{backend} not built")
    if not cpu_peak_supported():
        pytest.skip("no /proc/self/clear_refs to measure peak memory with")
    points, lower, upper, radius, strides, counts = fcos_points((768, 1024))

    def peak(num_boxes):
        boxes = _images(0, 2, num_boxes, (768, 1024))
        gt, num_gt = padded_gt(boxes, slots=num_boxes)
        call = lambda: ops.fcos_assign(points, lower, upper, radius, gt,  # noqa: E731
                                       num_gt, backend=backend)
        call()  # warm up: first-call allocations are not the op's
        ours = min(peak_extra_bytes(call) for _ in range(3))
        theirs = peak_extra_bytes(
            lambda: torchvision_matching(points, strides, counts, boxes))
        return ours, theirs

    few_ours, few_theirs = peak(25)
    many_ours, many_theirs = peak(200)
    p_times_g_bytes = points.shape[0] * 200 * 4
    assert many_theirs > p_times_g_bytes  # the measurement sees P×G tensors when they exist
    assert many_theirs > 3 * few_theirs
    assert many_ours < many_theirs / 4, (many_ours, many_theirs)
    # O(P + G): eight times the boxes, not eight times the memory.
    assert many_ours < 1.5 * few_ours + 2**20, (few_ours, many_ours)


def _bad_calls(device):
    points, lower, upper, radius, _, _ = fcos_points((32, 32), device=device)
    gt, num_gt = padded_gt(_images(1, 2, 3, (32, 32)))
    gt, num_gt = gt.to(device), num_gt.to(device)
    nan_gt = gt.clone()
    nan_gt[0, 0, 0] = float("nan")
    inf_points = points.clone()
    inf_points[3, 1] = float("inf")
    nan_radius = radius.clone()
    nan_radius[0] = float("nan")
    call = lambda b, **kw: ops.fcos_assign(  # noqa: E731
        kw.get("points", points), kw.get("lower", lower), kw.get("upper", upper),
        kw.get("radius", radius), kw.get("gt_boxes", gt), kw.get("num_gt", num_gt), backend=b)
    return {
        "points_yx_xyz": ("points", lambda b: call(b, points=torch.zeros(points.shape[0], 3,
                                                                         device=device))),
        "points_int": ("points", lambda b: call(b, points=points.long())),
        "lower_length": ("lower", lambda b: call(b, lower=lower[:-1])),
        "radius_2d": ("radius", lambda b: call(b, radius=radius[:, None])),
        "gt_boxes_2d": ("gt_boxes", lambda b: call(b, gt_boxes=gt[0])),
        "gt_boxes_last_dim": ("gt_boxes", lambda b: call(b, gt_boxes=gt[..., :3])),
        "num_gt_float": ("num_gt", lambda b: call(b, num_gt=num_gt.float())),
        "num_gt_length": ("num_gt", lambda b: call(b, num_gt=num_gt[:1])),
        "num_gt_too_big": ("num_gt", lambda b: call(b, num_gt=num_gt + 100)),
        "num_gt_negative": ("num_gt", lambda b: call(b, num_gt=num_gt - 100)),
        "device_mismatch": ("gt_boxes", lambda b: call(b, gt_boxes=gt.to("meta"))),
        "nan_gt": ("gt_boxes", lambda b: call(b, gt_boxes=nan_gt)),
        "inf_points": ("points", lambda b: call(b, points=inf_points)),
        "nan_radius": ("radius", lambda b: call(b, radius=nan_radius)),
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
def test_unvalidated_bad_values_do_not_crash(backend, device, switch, monkeypatch):
    """With checks off, NaN/inf and out-of-range num_gt stay memory-safe (num_gt clamped)."""
    if switch == "environment":
        monkeypatch.setenv("FCOS_FAST_VALIDATE", "0")
    kwargs = {"check_values": False} if switch == "check_values" else {}
    points, lower, upper, radius, _, _ = fcos_points((32, 32))
    gt, num_gt = padded_gt(_images(2, 3, 4, (32, 32)), slots=4)
    gt[0, 0] = float("nan")
    points[5] = float("inf")
    num_gt = torch.tensor([-3, 99, 2])
    args = [t.to(device) for t in (points, lower, upper, radius, gt, num_gt)]
    got = ops.fcos_assign(*args, backend=backend, **kwargs).cpu()
    assert got.shape == (3, points.shape[0])
    assert (got[0] == -1).all()  # num_gt < 0 means no boxes
    assert bool(((got >= -1) & (got < 4)).all())
    clamped = torch.tensor([0, 4, 2])
    expected = ops.fcos_assign(points, lower, upper, radius, gt, clamped, backend="reference",
                               **kwargs)
    assert torch.equal(got, expected)
