"""COCO-format detection datasets: COCO 2017, the exports of annotation tools
(Roboflow, CVAT, Label Studio), and the synthetic set, which is written in the same format.

The annotation file is read and checked in full when the dataset is built, so that a
malformed file is reported, by name, before any training step. Category ids (COCO's run
from 1 to 90 with gaps; tools start at 0 or 1) map to contiguous labels ``0..C-1`` in
increasing id order (or in the order of the ``classes`` asked for), and back through
``label_to_category_id`` for evaluation and inference output.

Two habits of annotation tools are taken care of: Roboflow lists a placeholder category 0
named after the project (the supercategory of the real ones) that no box uses, which is
left out; Label Studio writes ``file_name`` as ``images/<name>`` relative to the export
folder, which is found whether ``image_dir`` is that folder or its ``images/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from fcos_fast.data.common import DatasetError, DetectionDataset, make_target, quiet_coco

logger = logging.getLogger(__name__)

COCO_HELP = ("Run `python -m fcos_fast.data.download coco2017` (it fetches train2017.zip, "
             "val2017.zip and annotations_trainval2017.zip from images.cocodataset.org and "
             "unpacks them into data/coco), or point data.root at the folder that holds them; "
             "for your own COCO-format files set data.train_images, data.train_annotations, "
             "data.val_images and data.val_annotations instead.")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise DatasetError(f"annotation file {path} is not valid JSON: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read annotation file {path}: {error}") from error


def _check_fields(record: Any, fields: dict[str, type | tuple[type, ...]], what: str,
                  path: Path) -> None:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: {what} must be an object, got {record!r:.80}")
    for name, kind in fields.items():
        if name not in record:
            raise DatasetError(f"{path}: {what} has no {name!r} field: {record!r:.200}")
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            raise DatasetError(f"{path}: {what} has a bad {name!r}: {record[name]!r:.80}")


def validate_coco(data: Any, path: Path) -> None:
    """Check a COCO instances dict; raise ``DatasetError`` naming ``path`` and the record."""
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO annotation file holds an object, "
                           f"got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or malformed {key!r} list")
    number = (int, float)
    category_ids, image_sizes = set(), {}
    for category in data["categories"]:
        _check_fields(category, {"id": int, "name": str}, "a category", path)
        if category["id"] in category_ids:
            raise DatasetError(f"{path}: category id {category['id']} appears twice")
        category_ids.add(category["id"])
    for image in data["images"]:
        _check_fields(image, {"id": int, "file_name": str, "width": int, "height": int},
                      "an image", path)
        if image["id"] in image_sizes:
            raise DatasetError(f"{path}: image id {image['id']} appears twice")
        image_sizes[image["id"]] = (image["width"], image["height"])
    for annotation in data["annotations"]:
        _check_fields(annotation, {"id": int, "image_id": int, "category_id": int,
                                   "bbox": list}, "an annotation", path)
        where = f"annotation {annotation['id']}"
        bbox = annotation["bbox"]
        if (len(bbox) != 4 or not all(isinstance(v, number) and not isinstance(v, bool)
                                      for v in bbox)
                or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0):
            raise DatasetError(f"{path}: {where} has a bad bbox {bbox!r:.80} "
                               f"(expected [x, y, width, height], finite, width and height >= 0)")
        if annotation["image_id"] not in image_sizes:
            raise DatasetError(f"{path}: {where} refers to unknown image id "
                               f"{annotation['image_id']}")
        if annotation["category_id"] not in category_ids:
            raise DatasetError(f"{path}: {where} refers to unknown category id "
                               f"{annotation['category_id']}")


def roboflow_placeholder(data: dict[str, Any]) -> dict[str, Any] | None:
    """The placeholder category of a Roboflow export: id 0, used by no annotation, and
    the supercategory of the others (``{"id": 0, "name": "objects", "supercategory":
    "none"}`` beside ``{"id": 1, "name": "cat", "supercategory": "objects"}``); or None."""
    zero = next((c for c in data["categories"] if c["id"] == 0), None)
    if zero is None or any(a["category_id"] == 0 for a in data["annotations"]):
        return None
    if any(c.get("supercategory") == zero["name"] for c in data["categories"] if c is not zero):
        return zero
    return None


def select_categories(data: dict[str, Any], classes: Sequence[str] | None, path: Path
                      ) -> list[dict[str, Any]]:
    """The categories of ``data`` that are classes: those named ``classes``, in that order;
    without ``classes`` every category in id order but a Roboflow placeholder."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    by_name: dict[str, dict[str, Any]] = {}
    for category in categories:
        if category["name"] in by_name:
            raise DatasetError(f"{path}: categories {by_name[category['name']]['id']} and "
                               f"{category['id']} are both named {category['name']!r}; class "
                               f"names must be distinct")
        by_name[category["name"]] = category
    if classes is not None:
        unknown = [name for name in classes if name not in by_name]
        if unknown:
            raise DatasetError(f"data.classes names {unknown}, which {path} does not have; "
                               f"its categories are {sorted(by_name)}")
        return [by_name[name] for name in classes]
    placeholder = roboflow_placeholder(data)
    if placeholder is not None:
        logger.info("%s: category 0 %r left out: no box uses it and the other categories name "
                    "it as their supercategory (Roboflow's placeholder)", path,
                    placeholder["name"])
        categories = [c for c in categories if c is not placeholder]
    if not categories:
        raise DatasetError(f"{path} has no categories to detect")
    return categories


def image_base(image_dir: Path, file_names: Sequence[str], annotation_file: Path) -> Path:
    """The folder ``file_names`` are relative to: ``image_dir``; else, where the first image
    is found there, its parent when every name begins with the folder's own name (Label
    Studio's ``images/<name>`` given with ``image_dir`` = ``images``), or its subfolder
    named after the subset of an ``instances_<subset>.json`` (CVAT's ``images/<subset>/``)."""
    candidates = [image_dir]
    if file_names and all(name.startswith(image_dir.name + "/") for name in file_names):
        candidates.append(image_dir.parent)
    if annotation_file.stem.startswith("instances_"):
        candidates.append(image_dir / annotation_file.stem[len("instances_"):])
    if file_names:
        for base in candidates:
            if (base / file_names[0]).is_file():
                return base
    return image_dir


class CocoDetection(DetectionDataset):
    """Images of ``image_dir`` annotated by the COCO instances file ``annotation_file``.

    Args:
        image_dir: folder of the images (``file_name`` is relative to it, possibly with
            subfolders).
        annotation_file: a COCO-format JSON file (``instances_*.json``,
            ``_annotations.coco.json``, ``result.json``).
        classes: the category names to detect, in label order; objects of other
            categories are left out of training and evaluation. None: every category (in
            id order) but a Roboflow placeholder.
        filter_empty: leave out images without any non-crowd object (for training).
        verify_images: open every image header now (reports a corrupt file up front).
        name: what to call the dataset in error messages.
        help: how to get the data, appended to the error for a missing folder or file.
    """

    def __init__(self, image_dir: str | os.PathLike, annotation_file: str | os.PathLike, *,
                 classes: Sequence[str] | None = None, filter_empty: bool = False,
                 verify_images: bool = False, name: str = "COCO", help: str = COCO_HELP
                 ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.source = str(self.annotation_file)
        for needed in (self.annotation_file, self.image_dir):
            if not needed.exists():
                raise DatasetError(f"{name} data not found: {needed} does not exist. "
                                   f"Expected images in {self.image_dir}/ and annotations in "
                                   f"{self.annotation_file}. {help}")
        if self.annotation_file.is_dir():
            raise DatasetError(f"{self.annotation_file} is a folder, not a COCO-format JSON "
                               f"file (for a folder of VOC XML files set data.dataset: voc)")
        data = read_json(self.annotation_file)
        validate_coco(data, self.annotation_file)

        categories = select_categories(data, classes, self.annotation_file)
        self.label_to_category_id = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        category_to_label = {c: label for label, c in enumerate(self.label_to_category_id)}
        # The ground truth evaluation scores: the classes' categories and their objects.
        self._dataset = {**data, "categories": categories,
                         "annotations": [a for a in data["annotations"]
                                         if a["category_id"] in category_to_label]}

        objects: dict[int, tuple[list, list]] = {image["id"]: ([], []) for image in data["images"]}
        sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
        for annotation in self._dataset["annotations"]:
            if annotation.get("iscrowd", 0):
                continue
            width, height = sizes[annotation["image_id"]]
            x, y, w, h = annotation["bbox"]
            # Clip to the image and drop what has no area left (COCO has a few such boxes).
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(width)), min(y + h, float(height))
            if x2 > x1 and y2 > y1:
                boxes, labels = objects[annotation["image_id"]]
                boxes.append([x1, y1, x2, y2])
                labels.append(category_to_label[annotation["category_id"]])

        images = sorted(data["images"], key=lambda image: image["id"])
        if filter_empty:
            images = [image for image in images if objects[image["id"]][0]]
        self.image_ids = [image["id"] for image in images]
        # Tools on Windows may write backslashes.
        self._files = [image["file_name"].replace("\\", "/") for image in images]
        self.image_dir = image_base(self.image_dir, self._files, self.annotation_file)
        self._sizes = [(image["height"], image["width"]) for image in images]
        self._objects = [objects[image["id"]] for image in images]

        self.check_files(self.annotation_file, verify_images)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._files[index]

    def load(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        boxes, labels = self._objects[index]
        image = self.read_image(index, self._sizes[index], self.annotation_file)
        return image, make_target(boxes, labels, self.image_ids[index])

    def coco_gt(self):
        # COCOeval needs an area and a crowd flag on every annotation.
        annotations = [{"area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a}
                       for a in self._dataset["annotations"]]
        return quiet_coco({**self._dataset, "annotations": annotations})
