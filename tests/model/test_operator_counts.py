"""Constant work per batch after the head: the operators the losses and the
post-processing dispatch do not grow with the batch size.

On a GPU every operator that does work is at least one kernel launch (~5 us), so what
runs after the head is the fixed cost a batch pays; loops over the images make it grow
with the batch. Counted with ``torch.profiler`` on the CPU, from the head outputs to
the loss dict (``FCOS.compute_losses``) and to the detections (the static path,
``postprocess_detections_padded``, and the dynamic ``FCOS.detect``), at B = 2 and
B = 16 with C = 80 classes on 192 px images:

* every top-level operator the profiler records (views, metadata queries and no-op
  conversions included) must be the same number at both batch sizes, and at most 60;
* so must the operators that can launch work (those minus views, metadata queries and
  conversions that returned their input).

Before (per-image loops in ``pad_targets`` and in the final split of the detections,
torchvision's focal loss, an index-by-mask of each foreground tensor, no-op ``aten::to``
and ``aten::promote_types`` in the ops' argument handling): 205 and 149 at B = 16, 4 to 6
more per image; the dynamic per-level path 125 / 101 (a chain of 17 per level: a mask,
four selections by it and an image index each). Now, all operators / working ones:
losses 44 / 31 (53 / 41 with the 9-operator focal loss and its one-hot targets, before
the fused ``ops.sigmoid_focal_loss``), static per-class post-processing 40 / 22,
per-level 54 / 39, dynamic per-class 42 / 33, per-level 57 / 49, at every batch size.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fcos_fast.model import FCOS
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import make_points
from fcos_fast.model.postprocess import postprocess_detections_padded
from tests.model._helpers import random_batch

NUM_CLASSES = 80
IMAGE_SIZE = 192
BATCH_SIZES = (2, 16)
MAX_OPERATORS = 60
# The losses alone, since the focal loss is one fused operator: all, and working ones.
MAX_LOSS_OPERATORS, MAX_LOSS_WORKING = 44, 31

#: Operators that only make a view or read metadata: no kernel, whatever the device.
NO_WORK = {
    "aten::view", "aten::reshape", "aten::select", "aten::slice", "aten::narrow",
    "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::permute", "aten::transpose",
    "aten::t", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk",
    "aten::flatten", "aten::unflatten", "aten::view_as", "aten::alias", "aten::as_strided",
    "aten::detach", "aten::detach_", "aten::lift_fresh", "aten::promote_types",
    "aten::result_type",
}
#: Operators that do nothing when they return their input (no child operator ran).
NO_WORK_WHEN_LEAF = {"aten::to", "aten::contiguous", "aten::reshape"}


def count_operators(fn) -> tuple[int, int, list[str]]:
    """``(all top-level operators, working ones, their names)`` of one call of ``fn``
    after a warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    top_level = [event for event in profiler.events() if event.cpu_parent is None]
    working = [event.name for event in top_level if event.name not in NO_WORK
               and not (event.name in NO_WORK_WHEN_LEAF and not event.cpu_children)]
    return len(top_level), len(working), working


def _case(batch_size: int, candidates: str = "per_class"):
    """A model, head outputs of ``batch_size`` images with many candidates, the points
    and targets of up to 12 boxes per image."""
    generator = torch.Generator().manual_seed(batch_size)
    feature_shapes = [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    points = make_points(feature_shapes, (IMAGE_SIZE, IMAGE_SIZE), [8, 16, 32, 64, 128],
                         device=torch.device("cpu"))
    num_points = sum(points.num_per_level)
    outputs = HeadOutputs(
        torch.randn(batch_size, num_points, NUM_CLASSES, generator=generator) - 2,
        torch.rand(batch_size, num_points, 4, generator=generator) * 3,
        torch.randn(batch_size, num_points, generator=generator))
    model = FCOS(NUM_CLASSES, "resnet18", score_thresh=0.05, candidates=candidates)
    _, targets = random_batch(generator, NUM_CLASSES, num_images=batch_size,
                              sizes=(IMAGE_SIZE, IMAGE_SIZE), max_boxes=12)
    return model, outputs, points, targets


def _counts(make_call, **case_kwargs):
    return {batch_size: count_operators(make_call(*_case(batch_size, **case_kwargs)))
            for batch_size in BATCH_SIZES}


def _assert_constant_and_small(counts, most=MAX_OPERATORS, most_working=MAX_OPERATORS):
    (all_small, working_small, names), (all_large, working_large, _) = (
        counts[batch_size] for batch_size in BATCH_SIZES)
    assert all_small == all_large, counts
    assert working_small == working_large, counts
    assert all_large <= most, counts
    assert working_large <= most_working, names


def test_losses():
    def call(model, outputs, points, targets):
        return lambda: model.compute_losses(outputs, points, targets)

    counts = _counts(call)
    _assert_constant_and_small(counts, MAX_LOSS_OPERATORS, MAX_LOSS_WORKING)
    assert counts[16][2].count("fcos_fast::sigmoid_focal_loss") == 1


@pytest.mark.parametrize("candidates", ["per_class", "per_level"])
def test_static_post_processing(candidates):
    def call(model, outputs, points, targets):
        return lambda: postprocess_detections_padded(
            outputs, points, (IMAGE_SIZE, IMAGE_SIZE), score_thresh=model.score_thresh,
            nms_thresh=model.nms_thresh, topk_candidates=model.topk_candidates,
            detections_per_img=model.detections_per_img, candidates=model.candidates)

    counts = _counts(call, candidates=candidates)
    _assert_constant_and_small(counts)
    assert counts[16][2].count("fcos_fast::batched_nms_padded") == 1


@pytest.mark.parametrize("candidates", ["per_class", "per_level"])
def test_dynamic_post_processing(candidates):
    """``FCOS.detect`` returns one dict per image; the split into them is one
    ``split`` per output (views), so its operators do not grow with the batch either.
    Per level (torchvision's scheme, that of ``from_torchvision`` models): one ``topk``
    per level for the whole batch, then one compaction of all levels' candidates."""
    def call(model, outputs, points, targets):
        return lambda: model.detect(outputs, points, [(IMAGE_SIZE, IMAGE_SIZE)] * len(targets))

    counts = _counts(call, candidates=candidates)
    _assert_constant_and_small(counts)
    names = counts[16][2]
    assert names.count("fcos_fast::batched_nms") == 1
    assert names.count("aten::topk") == (5 if candidates == "per_level" else 0)


def test_the_counter_sees_a_loop_over_images():
    """The check can fail: a per-image loop of one operator shows up per image."""
    def call(model, outputs, points, targets):
        return lambda: [row.sum() for row in outputs.cls_logits]

    counts = _counts(call)
    assert counts[16][1] - counts[2][1] == 14


# The pieces rewritten for a constant operator count give the values of what they replace.

@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_loss_equals_torchvisions(alpha):
    from torchvision.ops import sigmoid_focal_loss

    from fcos_fast.model.loss import sigmoid_focal_loss_sum

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, 7, generator=generator) * 4
    targets = torch.rand(4, 300, 7, generator=generator) < 0.1
    expected = sigmoid_focal_loss(logits, targets.float(), alpha=alpha, gamma=2.0,
                                  reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss_sum(logits, targets, alpha=alpha,
                                                      gamma=2.0), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_classification_loss_equals_the_composition_it_replaced(dtype):
    """fcos_losses' fused focal loss (bfloat16 logits read as they are) gives the loss and
    the logits' gradient of the 9-operator composition on one-hot targets (on the logits
    converted to float32, as the losses did before)."""
    model, outputs, points, targets = _case(2)
    logits = outputs.cls_logits.to(dtype).requires_grad_(True)
    losses = model.compute_losses(outputs._replace(cls_logits=logits), points, targets)
    losses["cls_loss"].backward()

    from fcos_fast.model.loss import (assign_targets, foreground_normalizer,
                                      sigmoid_focal_loss_sum)

    reference = logits.detach().float().requires_grad_(True)
    assigned = assign_targets(points, targets,
                              center_sampling_radius=model.center_sampling_radius)
    is_target = assigned.labels[..., None] == torch.arange(NUM_CLASSES)
    expected = sigmoid_focal_loss_sum(reference, is_target) / foreground_normalizer(
        (assigned.labels >= 0).float())
    expected.backward()
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(losses["cls_loss"], expected, rtol=1e-5, atol=0)
    # Other formulas than autograd's of the composition: a few float32 ulps, or two
    # roundings to bfloat16 (the fused gradient is stored, then scaled by 1 / foreground).
    info = torch.finfo(dtype)
    torch.testing.assert_close(logits.grad.float(), reference.grad.to(dtype).float(),
                               rtol=max(2 * info.eps, 1e-5),
                               atol=2 * info.smallest_normal * info.eps)


def test_padded_targets_keep_every_box_in_its_image_and_a_padding_row():
    from fcos_fast.model.loss import pad_targets

    boxes = [torch.rand(count, 4) for count in (3, 0, 5)]
    targets = [{"boxes": b, "labels": torch.arange(len(b))} for b in boxes]
    padded, labels, num_gt = pad_targets(targets)
    assert padded.shape == (3, 6, 4) and labels.shape == (3, 6)
    assert num_gt.tolist() == [3, 0, 5]
    for image, b in enumerate(boxes):
        assert torch.equal(padded[image, :len(b)], b)
        assert torch.equal(labels[image, :len(b)], torch.arange(len(b)))
        assert (padded[image, len(b):] == 0).all() and (labels[image, len(b):] == -1).all()


def test_box_decoding_and_centerness_are_the_per_coordinate_formulas_bitwise():
    from fcos_fast.model.points import centerness_targets, decode_boxes

    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 500, 2, generator=generator) * 300
    stride = torch.tensor([8.0, 16.0, 32.0])[torch.randint(0, 3, (2, 500), generator=generator)]
    distances = torch.rand(2, 500, 4, generator=generator) * 7
    scaled = distances * stride[..., None]
    x, y = xy.unbind(-1)
    expected = torch.stack((x - scaled[..., 0], y - scaled[..., 1],
                            x + scaled[..., 2], y + scaled[..., 3]), dim=-1)
    boxes = decode_boxes(xy, stride, distances)
    assert torch.equal(boxes, expected)
    left, right = x - boxes[..., 0], boxes[..., 2] - x
    top, bottom = y - boxes[..., 1], boxes[..., 3] - y
    expected = torch.sqrt(torch.minimum(left, right) / torch.maximum(left, right)
                          * (torch.minimum(top, bottom) / torch.maximum(top, bottom)))
    assert torch.equal(centerness_targets(xy, boxes), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_decode_and_centerness_are_decode_boxes_and_centerness_targets_bitwise(dtype):
    """The 2- and 7-operator forms the losses and post-processing use, against the
    readable formulas, on a real grid (P6/P7 steps included) and a batch of distances."""
    from fcos_fast.model.points import centerness_targets, decode_boxes, make_points

    points = make_points([(25, 19), (13, 10), (7, 5), (4, 3), (2, 2)], (200, 150),
                         [8, 16, 32, 64, 128], device=torch.device("cpu"), dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    distances = torch.rand(3, len(points.xy), 4, generator=generator, dtype=dtype) * 9 + 1e-3
    boxes = points.decode(distances)
    assert torch.equal(boxes, decode_boxes(points.xy, points.stride, distances))
    assert torch.equal(points.centerness(boxes), centerness_targets(points.xy, boxes))
    lower, upper = points.scale_ranges()
    expected_lower, expected_upper = points.stride * 4, points.stride * 8
    expected_lower[:points.num_per_level[0]] = 0
    expected_upper[-points.num_per_level[-1]:] = float("inf")
    assert torch.equal(lower, expected_lower) and torch.equal(upper, expected_upper)
