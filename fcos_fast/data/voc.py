"""Pascal VOC detection (``VOCdevkit/VOC2007`` layout, one XML file per image).

Objects marked ``difficult`` are left out of training unless asked for, and are never
scored: for the COCO-style evaluation they become crowd regions (ignored), and the VOC
evaluation (``fcos_fast.engine.evaluation.voc_ap50``) skips them as the VOC devkit does.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from torch import Tensor

from fcos_fast.data.common import DatasetError, DetectionDataset, make_target, quiet_coco

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

VOC_HELP = ("Run `python -m fcos_fast.data.download voc2007` (it fetches "
            "VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar and unpacks them into "
            "data/VOCdevkit/VOC2007), or point data.root at the folder holding VOCdevkit.")


def parse_voc_xml(path: Path, class_to_label: dict[str, int]) -> dict[str, Any]:
    """One VOC annotation file -> ``{"width", "height", "boxes", "labels", "difficult"}``.

    Boxes are ``(x1, y1, x2, y2)`` with VOC's 1-based pixel indices made 0-based
    continuous coordinates (``x1 - 1``, ``y1 - 1``, ``x2``, ``y2``), as detectron2 does.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise DatasetError(f"cannot parse VOC annotation {path}: {error}") from error

    def number(node: ET.Element, tag: str, what: str) -> float:
        text = node.findtext(tag)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise DatasetError(f"VOC annotation {path}: {what} has no numeric <{tag}> "
                               f"(got {text!r})") from None

    size = root.find("size")
    if size is None:
        raise DatasetError(f"VOC annotation {path} has no <size>")
    width, height = int(number(size, "width", "<size>")), int(number(size, "height", "<size>"))
    boxes, labels, difficult = [], [], []
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        what = f"object {index} ({name or 'unnamed'})"
        if name not in class_to_label:
            raise DatasetError(f"VOC annotation {path}: {what} has unknown class {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"VOC annotation {path}: {what} has no <bndbox>")
        x1, y1, x2, y2 = (number(box, tag, what) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if not (x1 <= x2 and y1 <= y2):
            raise DatasetError(f"VOC annotation {path}: {what} has a box without area "
                               f"{[x1, y1, x2, y2]}")
        # 1-based pixel indices -> 0-based continuous coordinates, clipped to the image.
        x1, y1 = max(x1 - 1, 0.0), max(y1 - 1, 0.0)
        x2, y2 = min(x2, float(width)), min(y2, float(height))
        if not (x1 < x2 and y1 < y2):
            raise DatasetError(f"VOC annotation {path}: {what} lies outside the "
                               f"{width}x{height} image")
        boxes.append([x1, y1, x2, y2])
        labels.append(class_to_label[name])
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    return {"width": width, "height": height, "boxes": boxes, "labels": labels,
            "difficult": difficult}


def find_voc(root: str | os.PathLike, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root`` may be it, ``VOCdevkit`` or its parent)."""
    root = Path(root)
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(f"Pascal VOC {year} not found under {root}: expected "
                       f"{root}/VOCdevkit/VOC{year}/ with Annotations/, JPEGImages/ and "
                       f"ImageSets/Main/. {VOC_HELP}")


class VOCDetection(DetectionDataset):
    """Pascal VOC ``image_set`` (``train``, ``val``, ``trainval`` or ``test``) of ``year``.

    Args:
        root: the ``VOCdevkit`` folder, its parent, or ``VOC<year>`` itself.
        image_set: the split listed in ``ImageSets/Main/<image_set>.txt``.
        use_difficult: keep ``difficult`` objects in the training targets.
        verify_images: open every image header now.
    """

    def __init__(self, root: str | os.PathLike, image_set: str = "trainval", *,
                 year: str = "2007", use_difficult: bool = False,
                 verify_images: bool = False) -> None:
        self.root = find_voc(root, year)
        split_file = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            raise DatasetError(f"Pascal VOC {year} split {image_set!r} not found: {split_file} "
                               f"does not exist. {VOC_HELP}")
        self.file_ids = [line.strip() for line in split_file.read_text().splitlines()
                         if line.strip()]
        self.class_names = list(VOC_CLASSES)
        self.label_to_category_id = list(range(1, len(VOC_CLASSES) + 1))
        self.image_ids = list(range(len(self.file_ids)))
        class_to_label = {name: label for label, name in enumerate(VOC_CLASSES)}
        self._records = [parse_voc_xml(self.root / "Annotations" / f"{file_id}.xml",
                                       class_to_label) for file_id in self.file_ids]
        self.use_difficult = use_difficult
        self.check_files(split_file, verify_images)

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.file_ids[index]}.jpg"

    def annotations(self, index: int) -> dict[str, Any]:
        """All objects of an image, ``difficult`` ones included (for evaluation)."""
        return self._records[index]

    def load(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        record = self._records[index]
        keep = [i for i, hard in enumerate(record["difficult"]) if self.use_difficult or not hard]
        image = self.read_image(index, (record["height"], record["width"]),
                                self.root / "Annotations" / f"{self.file_ids[index]}.xml")
        return image, make_target([record["boxes"][i] for i in keep],
                                  [record["labels"][i] for i in keep], self.image_ids[index])

    def coco_gt(self):
        images, annotations = [], []
        for index, record in enumerate(self._records):
            images.append({"id": self.image_ids[index], "file_name": f"{self.file_ids[index]}.jpg",
                           "width": record["width"], "height": record["height"]})
            for box, label, hard in zip(record["boxes"], record["labels"], record["difficult"]):
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": self.image_ids[index],
                    "category_id": self.label_to_category_id[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(hard),  # difficult: ignored by COCOeval, never scored
                })
        categories = [{"id": c, "name": n}
                      for c, n in zip(self.label_to_category_id, self.class_names)]
        return quiet_coco({"images": images, "annotations": annotations,
                           "categories": categories})
