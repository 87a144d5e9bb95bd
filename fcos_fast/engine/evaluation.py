"""Evaluation: run the model over a dataset, score it with pycocotools (and, for VOC, the
VOC devkit's AP@0.5).

``evaluate`` works on one process or several (each runs its share of the images; rank 0
gathers the detections and scores them) and returns the same metrics on every process:

* ``mAP`` (COCO AP@[.5:.95]), ``mAP50``, ``mAP75``, ``mAP_small/medium/large``;
* ``per_class_AP`` and ``per_class_AP50``, keyed by class name;
* ``categories``: the dataset's ``[{"id", "name"}]`` in label order;
* for VOC, ``voc_mAP50`` and ``per_class_voc_AP50`` (11-point AP for VOC 2007, with
  ``difficult`` objects neither true nor false positives);
* ``precision``: the precision the network ran at (``fcos_fast.engine.precision``).

An AP that is not defined — a class, or an object size range, without any ground truth
in the split — is None (JSON ``null``), not pycocotools' -1 or NaN, and means are taken
over the defined ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from fcos_fast.data import DetectionDataset, VOCDetection, test_loader
from fcos_fast.engine.distributed import (all_gather_objects, broadcast_object, get_rank,
                                          get_world_size, is_main_process)
from fcos_fast.engine.precision import Precision, autocast

logger = logging.getLogger(__name__)

_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


@torch.no_grad()
def inference(model: nn.Module, dataset: DetectionDataset, *, batch_size: int = 8,
              device: torch.device = torch.device("cpu"), num_workers: int = 0,
              progress: bool = False, precision: Precision | None = None
              ) -> list[dict[str, Any]]:
    """This process's share of the detections: per image ``{"image_id", "boxes" [D, 4]
    xyxy, "scores" [D], "labels" [D]}`` on the CPU, in the original image coordinates.

    ``precision`` is the autocast of the forward pass (``fcos_fast.engine.precision``;
    the model keeps its post-processing in float32); None: float32. The model is used as
    it is (its memory format included).
    """
    loader = test_loader(dataset, batch_size=batch_size, rank=get_rank(),
                         world_size=get_world_size(), num_workers=num_workers)
    was_training = model.training
    model.eval()
    results = []
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc="evaluate", leave=False, dynamic_ncols=True)
    try:
        for images, targets in batches:
            with autocast(precision):
                outputs = model([image.to(device) for image in images])
            for target, output in zip(targets, outputs):
                results.append({"image_id": target["image_id"],
                                **{key: output[key].cpu() for key in ("boxes", "scores", "labels")}})
    finally:
        model.train(was_training)
    return results


def to_coco_results(predictions: list[dict[str, Any]], label_to_category_id: list[int]
                    ) -> list[dict[str, Any]]:
    """Detections in pycocotools' result format (``bbox`` as ``[x, y, w, h]``)."""
    results = []
    for prediction in predictions:
        boxes = prediction["boxes"].tolist()
        for (x1, y1, x2, y2), score, label in zip(boxes, prediction["scores"].tolist(),
                                                  prediction["labels"].tolist()):
            results.append({"image_id": prediction["image_id"],
                            "category_id": label_to_category_id[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def coco_evaluate(dataset: DetectionDataset, predictions: list[dict[str, Any]]
                  ) -> tuple[dict[str, Any], str]:
    """COCO box metrics of ``predictions`` on ``dataset``; also the printed summary table."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = dataset.coco_gt()
    results = to_coco_results(predictions, dataset.label_to_category_id)
    metrics: dict[str, Any] = {name: 0.0 for name in _STAT_NAMES}
    has_objects = {category for category in dataset.label_to_category_id
                   if coco_gt.getAnnIds(catIds=[category], iscrowd=False)}
    metrics["per_class_AP"] = {name: 0.0 if category in has_objects else None
                               for name, category in zip(dataset.class_names,
                                                         dataset.label_to_category_id)}
    metrics["per_class_AP50"] = dict(metrics["per_class_AP"])
    metrics["categories"] = [{"id": category, "name": name} for name, category
                             in zip(dataset.class_names, dataset.label_to_category_id)]
    if not results:
        return metrics, "no detections: every AP is 0\n"

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(dataset.image_ids)
        evaluator.params.catIds = list(dataset.label_to_category_id)
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    # pycocotools' -1: no ground truth in that size range.
    metrics.update({name: float(value) if value >= 0 else None
                    for name, value in zip(_STAT_NAMES, evaluator.stats)})

    # precision: [IoU thresholds, recall points, categories, area ranges, max dets]; -1
    # where a category has no ground truth.
    precision = evaluator.eval["precision"]
    category_index = {c: k for k, c in enumerate(evaluator.params.catIds)}
    for name, category in zip(dataset.class_names, dataset.label_to_category_id):
        k = category_index[category]
        for key, values in (("per_class_AP", precision[:, :, k, 0, -1]),
                            ("per_class_AP50", precision[0, :, k, 0, -1])):
            values = values[values > -1]
            metrics[key][name] = float(values.mean()) if values.size else None
    return metrics, summary.getvalue()


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).eps)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Area under the precision-recall curve: VOC 2007's 11-point interpolation, or the
    exact area (VOC 2010 and later)."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[changes + 1] - recall[changes]) * precision[changes + 1]))


def voc_evaluate(dataset: VOCDetection, predictions: list[dict[str, Any]], *,
                 iou_threshold: float = 0.5, use_07_metric: bool = True) -> dict[str, Any]:
    """VOC AP at ``iou_threshold`` per class and its mean (``difficult`` objects ignored)."""
    by_image = {p["image_id"]: p for p in predictions}
    per_class = {}
    for label, name in enumerate(dataset.class_names):
        ground_truth, detections, num_positives = {}, [], 0
        for index, image_id in enumerate(dataset.image_ids):
            record = dataset.annotations(index)
            mask = np.asarray(record["labels"], dtype=np.int64) == label
            boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)[mask]
            difficult = np.asarray(record["difficult"], dtype=bool)[mask]
            ground_truth[image_id] = (boxes, difficult, np.zeros(len(boxes), dtype=bool))
            num_positives += int((~difficult).sum())
            prediction = by_image.get(image_id)
            if prediction is not None:
                keep = prediction["labels"] == label
                for box, score in zip(prediction["boxes"][keep].double().numpy(),
                                      prediction["scores"][keep].tolist()):
                    detections.append((score, image_id, box))
        detections.sort(key=lambda d: -d[0])
        true_positive = np.zeros(len(detections))
        false_positive = np.zeros(len(detections))
        for d, (_, image_id, box) in enumerate(detections):
            boxes, difficult, taken = ground_truth[image_id]
            overlaps = _box_iou(box, boxes) if len(boxes) else np.zeros(0)
            best = int(overlaps.argmax()) if len(overlaps) else -1
            if best >= 0 and overlaps[best] > iou_threshold:
                if difficult[best]:
                    continue  # neither true nor false positive
                if not taken[best]:
                    taken[best] = True
                    true_positive[d] = 1
                else:
                    false_positive[d] = 1
            else:
                false_positive[d] = 1
        if num_positives == 0:
            per_class[name] = None  # nothing to find: no AP
            continue
        true_positive, false_positive = np.cumsum(true_positive), np.cumsum(false_positive)
        recall = true_positive / num_positives
        precision = true_positive / np.maximum(true_positive + false_positive,
                                               np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, use_07_metric)
    scored = [ap for ap in per_class.values() if ap is not None]
    return {"voc_mAP50": float(np.mean(scored)) if scored else 0.0,
            "per_class_voc_AP50": per_class}


def format_per_class(metrics: dict[str, Any]) -> str:
    """A small table of the per-class APs."""
    keys = [key for key in ("per_class_AP", "per_class_AP50", "per_class_voc_AP50")
            if key in metrics]
    names = list(metrics[keys[0]])
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{key[len('per_class_'):]:>8}" for key in keys)]
    for name in names:
        lines.append(f"{name:<{width}}  " + "  ".join(_ap_cell(metrics[key][name]) for key in keys))
    if any(metrics[key][name] is None for key in keys for name in names):
        lines.append("(-: no ground truth of that class in this split)")
    return "\n".join(lines) + "\n"


def _ap_cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:8.4f}"


def evaluate(model: nn.Module, dataset: DetectionDataset, *, batch_size: int = 8,
             device: torch.device = torch.device("cpu"), num_workers: int = 0,
             progress: bool = False, precision: Precision | None = None
             ) -> tuple[dict[str, Any], str]:
    """Metrics of ``model`` on ``dataset`` and the printable report (on every process).

    ``precision``: the autocast of the forward pass, as for ``inference`` (None:
    float32); ``metrics["precision"]`` names it.
    """
    predictions = inference(model, dataset, batch_size=batch_size, device=device,
                            num_workers=num_workers, progress=progress, precision=precision)
    gathered = all_gather_objects(predictions)
    result = None
    if is_main_process():
        predictions = [p for shard in gathered for p in shard]
        metrics, table = coco_evaluate(dataset, predictions)
        if isinstance(dataset, VOCDetection):
            metrics.update(voc_evaluate(dataset, predictions))
            table += f"VOC2007 mAP@0.5 (11-point): {metrics['voc_mAP50']:.4f}\n"
        metrics["num_images"] = len(predictions)
        metrics["precision"] = precision.name if precision is not None else "fp32"
        result = (metrics, table + format_per_class(metrics))
    return broadcast_object(result)
