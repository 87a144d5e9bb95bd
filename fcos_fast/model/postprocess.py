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
import torch.nn.functional as F
from torch import Tensor

from fcos_fast import ops
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import Points

CANDIDATE_SCHEMES = ("per_class", "per_level")


class Candidates(NamedTuple):
    """Detection candidates of a batch, all ``[M]``."""

    scores: Tensor
    image: Tensor  # int64 image index in the batch
    point: Tensor  # int64 point index in [0, P)
    label: Tensor  # int64 class index in [0, C)


def detection_scores(outputs: HeadOutputs) -> Tensor:
    """``[B, P, C]`` float32 scores ``sqrt(sigmoid(cls_logit) * sigmoid(centerness))``."""
    outputs = outputs.float()
    return torch.sqrt(torch.sigmoid(outputs.cls_logits)
                      * torch.sigmoid(outputs.centerness)[..., None])


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
    ``ops.per_class_topk`` is built for many class columns of moderate length). The
    scores are thresholded once, the levels' top-k concatenated per image, and the
    candidates compacted in one step: a fixed number of operators (and one host sync)
    whatever the batch size and the number of levels' candidates.

    Args:
        scores: ``[B, P, C]`` detection scores, levels concatenated along ``P``.
        num_per_level: points of each level.

    Returns:
        ``Candidates`` ordered by image, level, then score descending (torchvision's
        ``FCOS.postprocess_detections`` order: its loop over images, then levels).
    """
    num_classes = scores.shape[2]
    top_scores, pair = _top_per_level(scores, num_per_level, k, score_thresh)  # [B, L]
    # The slots below the threshold hold -inf (fewer than k candidates in the level).
    image, slot = torch.where(top_scores > score_thresh)
    pair = pair[image, slot]
    return Candidates(top_scores[image, slot], image, pair // num_classes, pair % num_classes)


def _top_per_level(scores: Tensor, num_per_level: list[int], k: int, score_thresh: float
                   ) -> tuple[Tensor, Tensor]:
    """Per image and level, the top ``min(k, n_l * C)`` (point, class) pairs of the
    thresholded scores, the levels side by side.

    Returns:
        ``(scores [B, L], pair [B, L])`` with ``L = sum_l min(k, n_l * C)``: level 0's
        top-k slots (score descending), then level 1's, ...; ``pair = point * C + class``
        over the whole image. A slot past a level's candidates has score ``-inf``.
    """
    batch_size, num_points, num_classes = scores.shape
    # Thresholded once for all levels (non-candidates and NaN become -inf, so that they
    # take a top-k slot only when there are fewer than k candidates); each image one row
    # of point * C + class pairs, split into the levels' column ranges (views).
    pairs_by_level = torch.where(scores > score_thresh, scores, float("-inf")).reshape(
        batch_size, num_points * num_classes).split(
            [count * num_classes for count in num_per_level], dim=1)
    top_scores, pairs = [], []
    start = 0
    for pairs_of_level in pairs_by_level:
        found, pair = pairs_of_level.topk(min(k, pairs_of_level.shape[1]), dim=1)
        top_scores.append(found)
        # Pair index over the whole image: point * C + class.
        pairs.append(pair + start if start else pair)
        start += pairs_of_level.shape[1]
    return torch.cat(top_scores, dim=1), torch.cat(pairs, dim=1)


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

    # Decoded as Points.decode does (bitwise decode_boxes), for the candidates only.
    regression = outputs.box_regression[found.image, found.point]
    if regression.dtype != torch.float32:
        regression = regression.float()
    boxes = points.xyxy[found.point] + regression * points.signed_stride[found.point]
    # Clip to each candidate's own image (height, width), before padding.
    upper = torch.as_tensor([(width, height, width, height) for height, width in image_sizes],
                            dtype=boxes.dtype, device=boxes.device)[found.image]  # [M, 4]
    boxes = torch.minimum(boxes.clamp(min=0), upper)

    keep = ops.batched_nms(_detached(boxes), _detached(found.scores),
                           torch.add(found.label, found.image, alpha=num_classes), nms_thresh,
                           backend=backend, check_values=False)  # by decreasing score
    keep, counts = _first_per_image(keep, found.image[keep], len(image_sizes),
                                    detections_per_img)
    # One gather and one split per output, whatever the batch size (views per image).
    return [{"boxes": boxes, "scores": scores, "labels": labels} for boxes, scores, labels
            in zip(boxes[keep].split(counts), found.scores[keep].split(counts),
                   found.label[keep].split(counts))]


def _detached(tensor: Tensor) -> Tensor:
    """``tensor`` without its autograd graph (itself when it has none: no operator)."""
    return tensor.detach() if tensor.requires_grad else tensor


def _first_per_image(keep: Tensor, image: Tensor, num_images: int, limit: int
                     ) -> tuple[Tensor, list[int]]:
    """The first ``limit`` entries of ``keep`` of every image, grouped by image in order.

    Args:
        keep: ``[K]`` candidate indices, best first.
        image: ``[K]`` the image of each.

    Returns:
        ``(selected [M], counts)``: ``selected`` holds image 0's entries in their order,
        then image 1's, ...; ``counts[b]`` of them are image ``b``'s (one host sync).
    """
    # A stable sort by image keeps each image's entries in their order; an entry's rank
    # in its image is its distance from the image's first entry.
    image, order = image.sort(stable=True)
    first = torch.searchsorted(image, image)  # position of each entry's image's first one
    rank = torch.arange(len(image), device=image.device) - first
    counts = torch.bincount(image, minlength=num_images).clamp(max=limit)
    return keep[order[rank < limit]], counts.tolist()


class PaddedDetections(NamedTuple):
    """Detections of a batch in fixed-size tensors; row ``i`` of image ``b`` is a
    detection iff ``i < num_detections[b]``, rows sorted by decreasing score.

    Attributes:
        boxes: ``[B, D, 4]`` float32 ``(x1, y1, x2, y2)``; zeros in the padding.
        scores: ``[B, D]`` float32; zeros in the padding.
        labels: ``[B, D]`` int64; ``-1`` in the padding.
        num_detections: ``[B]`` int64, at most ``D``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num_detections: Tensor


def postprocess_detections_padded(outputs: HeadOutputs, points: Points,
                                  image_size: tuple[int, int], *, score_thresh: float,
                                  nms_thresh: float, topk_candidates: int,
                                  detections_per_img: int, candidates: str = "per_class",
                                  backend: str | None = None) -> PaddedDetections:
    """``postprocess_detections`` with fixed-size outputs, for a batch of one image size.

    The same candidates, the same NMS and the same order (decreasing score, equal scores
    in the order of the dynamic path's candidate list: class then rank for
    ``"per_class"``, level then rank for ``"per_level"``), through the fixed-size ops
    ``ops.per_class_topk_padded`` and ``ops.batched_nms_padded``: every shape follows from
    the input shapes, nothing synchronises with the host and the number of operators
    does not depend on the batch size, so it compiles with ``fullgraph=True``, exports,
    and captures in a CUDA graph. Row ``i < num_detections[b]`` equals detection ``i`` of
    image ``b`` of ``postprocess_detections`` with ``image_sizes = [image_size] * B``.
    No autograd graph: run it under ``torch.no_grad()``.

    Args:
        outputs: head outputs ``[B, P, C]``, ``[B, P, 4]``, ``[B, P]``.
        points: the ``P`` points.
        image_size: ``(H, W)`` of every image (boxes are clipped to it).
        score_thresh, nms_thresh, topk_candidates, detections_per_img, candidates,
            backend: as ``postprocess_detections``.

    Returns:
        ``PaddedDetections`` with ``D = detections_per_img``.
    """
    if candidates not in CANDIDATE_SCHEMES:
        raise ValueError(f"candidates must be one of {CANDIDATE_SCHEMES}, got {candidates!r}")
    outputs = outputs.float()  # once: detection_scores' own call is then free
    scores = detection_scores(outputs)  # [B, P, C]
    batch_size, num_points, num_classes = scores.shape
    # Every point's box, decoded and clipped once, then gathered: fewer boxes than the
    # candidate slots (C * K >= P), and the same arithmetic per box as decoding the
    # candidates.
    boxes = _clip(points.decode(outputs.box_regression), image_size)  # [B, P, 4]

    if candidates == "per_class":
        # Column b * C + c holds class c of image b; one segment per (image, class).
        columns = scores.permute(1, 0, 2).reshape(num_points, batch_size * num_classes)
        top_scores, top_point, counts = ops.per_class_topk_padded(
            columns, topk_candidates, score_thresh, backend=backend)  # [B * C, K]
        slots = top_scores.shape[1]
        # Per image, slot c * K + j: the dynamic path's candidate order (class, rank).
        point = top_point.clamp(min=0).reshape(batch_size, num_classes * slots)
        candidate_boxes = _gather_boxes(boxes, point)
        keep = ops.batched_nms_padded(
            candidate_boxes.view(batch_size * num_classes, slots, 4), top_scores, counts,
            nms_thresh, backend=backend, check_values=False)
        candidate_scores = top_scores.reshape(batch_size, -1)
        label = None  # slot // K
    else:
        candidate_scores, point, label = _candidates_per_level_padded(
            scores, points.num_per_level, topk_candidates, score_thresh)
        slots = None
        candidate_boxes = _gather_boxes(boxes, point)
        # One segment per image, classes as categories.
        keep = ops.batched_nms_padded(candidate_boxes, candidate_scores,
                                      (candidate_scores > score_thresh).sum(dim=1), nms_thresh,
                                      label, backend=backend, check_values=False)

    # Kept candidates by decreasing score; the stable sort keeps equal scores in
    # candidate order, as the dynamic path's batched_nms does.
    keep = keep.reshape(batch_size, -1)
    ranked, order = torch.where(keep, candidate_scores, float("-inf")).sort(
        dim=1, descending=True, stable=True)
    if ranked.shape[1] > detections_per_img:
        ranked, order = ranked[:, :detections_per_img], order[:, :detections_per_img]
    elif ranked.shape[1] < detections_per_img:  # fewer slots than detections: pad
        missing = detections_per_img - ranked.shape[1]
        ranked = F.pad(ranked, (0, missing), value=float("-inf"))
        order = F.pad(order, (0, missing))
    # A kept candidate's score is above score_thresh (finite); the rest are -inf, sorted
    # after it: the first num_detections rows.
    found = ranked > float("-inf")
    num_detections = found.sum(dim=1)
    labels = order // slots if label is None else label.gather(1, order)
    return PaddedDetections(
        torch.where(found[..., None], _gather_boxes(candidate_boxes, order), 0.0),
        torch.where(found, ranked, 0.0), torch.where(found, labels, -1), num_detections)


def _candidates_per_level_padded(scores: Tensor, num_per_level: list[int], k: int,
                                 score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """``candidates_per_level`` in fixed-size tensors: per image the ``L = sum_l min(k,
    n_l * C)`` candidate slots, sorted by decreasing score, the ones above
    ``score_thresh`` first.

    The same ``torch.topk`` per level as ``candidates_per_level`` (so the same choice
    among equal scores); the stable sort then moves each image's candidates to the front
    of its row in the dynamic path's order among equal scores (level, then rank).

    Returns:
        ``(scores [B, L], point [B, L], label [B, L])``; slots past the candidates have
        score ``-inf``.
    """
    num_classes = scores.shape[2]
    top_scores, pair = _top_per_level(scores, num_per_level, k, score_thresh)
    top_scores, order = top_scores.sort(dim=1, descending=True, stable=True)
    pair = pair.gather(1, order)
    return top_scores, pair // num_classes, pair % num_classes


def _gather_boxes(boxes: Tensor, index: Tensor) -> Tensor:
    """``boxes [B, N, 4]`` at ``index [B, M]``: ``[B, M, 4]``."""
    return boxes.gather(1, index[..., None].expand(-1, -1, 4))


def _clip(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Boxes ``[..., 4]`` clipped to ``[0, W] x [0, H]``: the same values as
    ``torch.minimum(boxes.clamp(min=0), (W, H, W, H))``, with no tensor of sizes to
    build (a host-to-device copy)."""
    height, width = image_size
    corners = boxes.unflatten(-1, (2, 2))  # [..., corner, (x, y)]
    return torch.stack((corners[..., 0].clamp(0, width), corners[..., 1].clamp(0, height)),
                       dim=-1).flatten(-2)
