"""Candidate selection and postprocessing, on planted head outputs (no network)."""

from __future__ import annotations

import math

import pytest
import torch

from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import make_points
from fcos_fast.model.postprocess import (candidates_per_class, candidates_per_level,
                                         postprocess_detections)

# One 64x64 image: levels of 8x8, 4x4, 2x2, 1x1 and 1x1 points (85 in all).
POINTS = make_points([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], (64, 64), [8, 16, 32, 64, 128],
                     device=torch.device("cpu"))
NUM_POINTS = sum(POINTS.num_per_level)


def _logit(probability: torch.Tensor) -> torch.Tensor:
    return torch.log(probability) - torch.log1p(-probability)


def _outputs(scores: torch.Tensor, box_size: float = 0.5) -> HeadOutputs:
    """Head outputs whose detection scores are exactly ``scores`` ([B, P, C]).

    Centerness logit 0 gives ``sigmoid = 1/2``, so ``sqrt(p * 1/2) = s`` needs
    ``p = 2 s^2`` (scores must stay below ``sqrt(1/2)``); every box extends ``box_size``
    strides on each side of its point.
    """
    assert scores.max() < math.sqrt(0.5)
    batch_size, num_points, _ = scores.shape
    return HeadOutputs(cls_logits=_logit(2 * scores.double() ** 2).float(),
                       box_regression=torch.full((batch_size, num_points, 4), box_size),
                       centerness=torch.zeros(batch_size, num_points))


def _brute_force_per_class(scores, k, thresh):
    """Per (image, class): torch.topk of that column, then the threshold."""
    found = []
    for image in range(scores.shape[0]):
        for label in range(scores.shape[2]):
            top, point = scores[image, :, label].topk(min(k, scores.shape[1]))
            keep = top > thresh
            found += [(image, label, float(s), int(p)) for s, p in zip(top[keep], point[keep])]
    return found


@pytest.mark.parametrize("k, thresh", [(1, 0.0), (5, 0.3), (1000, 0.5), (3, 0.99)])
def test_per_class_candidates_match_a_loop_of_topk(k, thresh):
    scores = torch.rand(3, NUM_POINTS, 4) * 0.7
    found = candidates_per_class(scores, k, thresh)
    as_tuples = [(int(i), int(c), float(s), int(p))
                 for s, i, p, c in zip(found.scores, found.image, found.point, found.label)]
    assert as_tuples == _brute_force_per_class(scores, k, thresh)


@pytest.mark.parametrize("k, thresh", [(1, 0.0), (7, 0.3), (1000, 0.1)])
def test_per_level_candidates_match_torchvisions_loop(k, thresh):
    """Per (image, level): threshold the flattened (point, class) scores, then topk; in
    torchvision's order (its loop over the images, then the levels)."""
    scores = torch.rand(2, NUM_POINTS, 3) * 0.7
    found = candidates_per_level(scores, POINTS.num_per_level, k, thresh)

    expected = []
    for image in range(2):
        for start, count in zip([0, 64, 80, 84, 85], POINTS.num_per_level):
            flat = scores[image, start:start + count].flatten()
            kept = torch.where(flat > thresh)[0]
            top, order = flat[kept].topk(min(k, len(kept)))
            pair = kept[order]
            expected += [(image, float(s), start + int(q) // 3, int(q) % 3)
                         for s, q in zip(top, pair)]
    assert [(int(i), float(s), int(p), int(c)) for s, i, p, c in
            zip(found.scores, found.image, found.point, found.label)] == expected


def test_per_class_keeps_a_rare_class_that_per_level_crowds_out():
    """A frequent class scoring high everywhere takes every per-level slot; per-class
    selection still keeps the single, lower-scoring object of the rare class."""
    scores = torch.full((1, NUM_POINTS, 2), 0.05)
    scores[0, :, 0] = torch.linspace(0.6, 0.7, NUM_POINTS)  # class 0: everywhere
    scores[0, 10, 1] = 0.4  # class 1: one point on the first level
    outputs = _outputs(scores)
    settings = dict(score_thresh=0.2, nms_thresh=0.6, topk_candidates=4,
                    detections_per_img=100)

    per_level = postprocess_detections(outputs, POINTS, [(64, 64)], candidates="per_level",
                                       **settings)[0]
    per_class = postprocess_detections(outputs, POINTS, [(64, 64)], candidates="per_class",
                                       **settings)[0]

    assert 1 not in per_level["labels"].tolist()
    assert per_class["labels"].tolist().count(1) == 1
    rare = per_class["labels"] == 1
    assert math.isclose(float(per_class["scores"][rare]), 0.4, rel_tol=1e-5)
    # Point 10 is (x, y) = (16, 8) on the stride-8 level; 0.5 strides each side.
    torch.testing.assert_close(per_class["boxes"][rare], torch.tensor([[12.0, 4.0, 20.0, 12.0]]))


def test_schemes_agree_when_nothing_is_cut():
    """With k above every count, both schemes see all candidates: same detections."""
    scores = torch.rand(2, NUM_POINTS, 5) * 0.7
    outputs = _outputs(scores, box_size=1.5)
    settings = dict(score_thresh=0.3, nms_thresh=0.5, topk_candidates=NUM_POINTS * 5,
                    detections_per_img=1000)
    sizes = [(64, 64), (50, 60)]
    per_level = postprocess_detections(outputs, POINTS, sizes, candidates="per_level",
                                       **settings)
    per_class = postprocess_detections(outputs, POINTS, sizes, candidates="per_class",
                                       **settings)
    for a, b in zip(per_level, per_class):
        assert len(a["boxes"]) > 0
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_boxes_are_clipped_to_each_image_and_images_do_not_suppress_each_other():
    scores = torch.full((2, NUM_POINTS, 1), 0.1)
    scores[:, 63, 0] = 0.5  # the last stride-8 point, (x, y) = (56, 56), in both images
    outputs = _outputs(scores, box_size=2.0)  # box (40, 40, 72, 72) before clipping
    detections = postprocess_detections(outputs, POINTS, [(64, 64), (60, 50)],
                                        score_thresh=0.2, nms_thresh=0.5, topk_candidates=10,
                                        detections_per_img=10)
    torch.testing.assert_close(detections[0]["boxes"], torch.tensor([[40.0, 40.0, 64.0, 64.0]]))
    torch.testing.assert_close(detections[1]["boxes"], torch.tensor([[40.0, 40.0, 50.0, 60.0]]))


def test_nms_suppresses_within_a_class_only_and_detections_per_img_cuts():
    scores = torch.full((1, NUM_POINTS, 2), 0.1)
    # Points 0 and 1, (0, 0) and (8, 0), boxes 4 strides wide clipped to the image:
    # (0, 0, 16, 16) and (0, 0, 24, 16), IoU 2/3 > 0.5.
    scores[0, 0, 0], scores[0, 1, 0], scores[0, 1, 1] = 0.7, 0.6, 0.5
    scores[0, 36, 0] = 0.4  # far away (x, y) = (32, 32): survives
    outputs = _outputs(scores, box_size=2.0)
    settings = dict(score_thresh=0.2, nms_thresh=0.5, topk_candidates=10)
    found = postprocess_detections(outputs, POINTS, [(64, 64)], detections_per_img=10,
                                   **settings)[0]
    assert found["labels"].tolist() == [0, 1, 0]
    torch.testing.assert_close(found["scores"], torch.tensor([0.7, 0.5, 0.4]))
    cut = postprocess_detections(outputs, POINTS, [(64, 64)], detections_per_img=2,
                                 **settings)[0]
    torch.testing.assert_close(cut["scores"], torch.tensor([0.7, 0.5]))


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="candidates must be one of"):
        postprocess_detections(_outputs(torch.rand(1, NUM_POINTS, 1) * 0.5), POINTS, [(64, 64)],
                               score_thresh=0.2, nms_thresh=0.5, topk_candidates=1,
                               detections_per_img=1, candidates="everything")
