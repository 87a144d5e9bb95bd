"""FCOS inference: head outputs to detections.

The score of a (point, class) pair is ``sqrt(sigmoid(cls_logit) * sigmoid(centerness))``.
Candidates above ``score_thresh`` are chosen in one of two schemes, decoded, clipped to
the image, and reduced by class-aware ``ops.batched_nms``:

* ``"per_class"``: the best ``k`` points of every class over the whole image
  (``ops.per_class_topk``), so that a rare class is not crowded out of the candidate
  list by a frequent one.
* ``"per_level"``: the best ``k`` (point, class) pairs of every pyramid level, all classes
  competing (torchvision's ``FCOS.postprocess_detections``; ``torch.topk``).

The whole batch goes through each op in one call: images become extra columns of the
score matrix given to ``ops.per_class_topk``, and extra categories for
``ops.batched_nms``, so candidates of different images never interact.

Detections keep the autograd graph when gradients are enabled, as torchvision's do
(explainability methods backpropagate from detection scores or boxes): the ops only
choose indices, and the scores and boxes are gathered from the head outputs with
autograd. Under ``torch.no_grad``/``inference_mode`` the same values come out, without a
graph. The ops skip their value checks here (``check_values=False``): the boxes are the
model's own predictions, and a diverged model's NaN must not become an exception (nor
cost a device sync per call).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fcos_fast import ops
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import Points, decode_boxes

CANDIDATE_SCHEMES = ("per_class", "per_level")


class Candidates(NamedTuple):
    """Detection candidates of a batch, all ``[M]``."""

    scores: Tensor
    image: Tensor  # int64 image index in the batch
    point: Tensor  # int64 point index in [0, P)
    label: Tensor  # int64 class index in [0, C)


def detection_scores(outputs: HeadOutputs) -> Tensor:
    """``[B, P, C]`` float32 scores ``sqrt(sigmoid(cls_logit) * sigmoid(centerness))``."""
    return torch.sqrt(torch.sigmoid(outputs.cls_logits.float())
                      * torch.sigmoid(outputs.centerness.float())[..., None])


def candidates_per_class(scores: Tensor, k: int, score_thresh: float, *,
                         backend: str | None = None) -> Candidates:
    """The up-to-``k`` best points of every (image, class) with score ``> score_thresh``.

    Args:
        scores: ``[B, P, C]`` detection scores.

    Returns:
        ``Candidates`` ordered by image, class, then score descending.
    """
    batch_size, num_points, num_classes = scores.shape
    # Column b * C + c holds class c of image b.
    columns = scores.detach().permute(1, 0, 2).reshape(num_points, batch_size * num_classes)
    top_scores, point, column = ops.per_class_topk(columns, k, score_thresh, backend=backend)
    image, label = column // num_classes, column % num_classes
    if scores.requires_grad:  # the same values, gathered with autograd
        top_scores = scores[image, point, label]
    return Candidates(top_scores, image, point, label)


def candidates_per_level(scores: Tensor, num_per_level: list[int], k: int,
                         score_thresh: float) -> Candidates:
    """The up-to-``k`` best (point, class) pairs of every (image, level) above threshold.

    One ``torch.topk`` per level serves the whole batch: each image is one long row of
    ``points * classes`` scores, the shape ``torch.topk`` is built for (whereas
    ``ops.per_class_topk`` is built for many class columns of moderate length).

    Args:
        scores: ``[B, P, C]`` detection scores, levels concatenated along ``P``.
        num_per_level: points of each level.

    Returns:
        ``Candidates`` ordered by level, image, then score descending.
    """
    batch_size, _, num_classes = scores.shape
    found: list[Candidates] = []
    start = 0  # index of the level's first point
    for level_scores in scores.split(num_per_level, dim=1):
        pairs = level_scores.reshape(batch_size, -1)  # [B, n * C], pair = point * C + class
        # Non-candidates (and NaN) become -inf so that they take a top-k slot only when
        # there are fewer than k candidates; the mask below then drops them.
        pairs = torch.where(pairs > score_thresh, pairs, float("-inf"))
        top_scores, pair = pairs.topk(min(k, pairs.shape[1]), dim=1)  # [B, k]
        keep = top_scores > score_thresh
        image = torch.arange(batch_size, device=scores.device)[:, None].expand_as(pair)
        pair = pair[keep]
        found.append(Candidates(top_scores[keep], image[keep], start + pair // num_classes,
                                pair % num_classes))
        start += level_scores.shape[1]
    return Candidates(*(torch.cat(parts) for parts in zip(*found)))


def postprocess_detections(outputs: HeadOutputs, points: Points,
                           image_sizes: list[tuple[int, int]], *, score_thresh: float,
                           nms_thresh: float, topk_candidates: int,
                           detections_per_img: int, candidates: str = "per_class",
                           backend: str | None = None) -> list[dict[str, Tensor]]:
    """Detections of every image, in the coordinates of the (resized) network input.

    Args:
        outputs: head outputs ``[B, P, C]``, ``[B, P, 4]``, ``[B, P]``.
        points: the ``P`` points.
        image_sizes: ``(H, W)`` of each image before padding; boxes are clipped to it.
        score_thresh: candidates need a score strictly greater.
        nms_thresh: IoU above which a lower-scoring box of the same class is dropped.
        topk_candidates: ``k`` of the candidate scheme (per class or per level).
        detections_per_img: the most detections kept per image, best first.
        candidates: ``"per_class"`` or ``"per_level"`` (see the module docstring).

    Returns:
        Per image ``{"boxes": [D, 4] (x1, y1, x2, y2), "scores": [D], "labels": [D] int64}``
        sorted by decreasing score; boxes and scores are float32 whatever the head's dtype,
        and differentiable with respect to the head outputs when gradients are enabled.
    """
    if candidates not in CANDIDATE_SCHEMES:
        raise ValueError(f"candidates must be one of {CANDIDATE_SCHEMES}, got {candidates!r}")
    scores = detection_scores(outputs)
    num_classes = scores.shape[2]
    if candidates == "per_class":
        found = candidates_per_class(scores, topk_candidates, score_thresh, backend=backend)
    else:
        found = candidates_per_level(scores, points.num_per_level, topk_candidates,
                                     score_thresh)

    boxes = decode_boxes(points.xy[found.point], points.stride[found.point],
                         outputs.box_regression[found.image, found.point].float())
    # Clip to each candidate's own image (height, width), before padding.
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)[found.image]
    upper = sizes.flip(1).repeat(1, 2)  # [M, 4]: (W, H, W, H)
    boxes = torch.minimum(boxes.clamp(min=0), upper)

    keep = ops.batched_nms(boxes.detach(), found.scores.detach(),
                           found.image * num_classes + found.label, nms_thresh,
                           backend=backend, check_values=False)  # by decreasing score
    kept_image = found.image[keep]
    detections = []
    for index in range(len(image_sizes)):
        image_keep = keep[kept_image == index][:detections_per_img]
        detections.append({"boxes": boxes[image_keep], "scores": found.scores[image_keep],
                           "labels": found.label[image_keep]})
    return detections
