"""Pascal VOC-format detection: one XML file per image, as the VOC devkit, LabelImg and
CVAT's "PASCAL VOC" export write them, with the 20 VOC classes or the user's own.

Two layouts: a ``VOC2007``-style folder (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``), or an image folder beside a folder of XML files. An
image's file is the XML's ``<filename>`` (else ``<id>.jpg``, or ``<id>`` with another
image suffix) in the image folder.

Objects marked ``difficult`` are left out of training unless asked for, and are never
scored: for the COCO-style evaluation they become crowd regions (ignored), and the VOC
evaluation (``fcos_fast.engine.evaluation.voc_evaluate``) skips them as the VOC devkit does.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from fcos_fast.data.common import DatasetError, DetectionDataset, make_target, quiet_coco

#: Image file suffixes tried for an image id whose XML names no existing file.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

VOC_HELP = ("Run `python -m fcos_fast.data.download voc2007` (it fetches "
            "VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar and unpacks them into "
            "data/VOCdevkit/VOC2007), or point data.root at the folder holding VOCdevkit.")


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """One VOC annotation file -> ``{"filename", "width", "height", "boxes", "names",
    "difficult"}`` (``filename``: the ``<filename>`` text, or None).

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
    boxes, names, difficult = [], [], []
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        what = f"object {index} ({name or 'unnamed'})"
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
        names.append(name)
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    filename = (root.findtext("filename") or "").strip() or None
    return {"filename": filename, "width": width, "height": height, "boxes": boxes,
            "names": names, "difficult": difficult}


def find_voc(root: str | os.PathLike, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root`` may be it, ``VOCdevkit`` or its parent)."""
    root = Path(root)
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(f"Pascal VOC {year} not found under {root}: expected "
                       f"{root}/VOCdevkit/VOC{year}/ with Annotations/, JPEGImages/ and "
                       f"ImageSets/Main/. {VOC_HELP}")


def read_split_file(path: Path) -> list[str]:
    """The image ids listed one per line in a VOC split file."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the split file {path}: {error}") from error


def _unknown_classes_message(unknown: Counter, first_file: dict[str, Path],
                             seen: set[str], classes: Sequence[str] | None) -> str:
    details = [f"unknown class {name!r} ({count} object{'s' * (count > 1)}, e.g. in "
               f"{first_file[name]})" for name, count in unknown.most_common(5)]
    if len(unknown) > 5:
        details.append(f"and {len(unknown) - 5} more")
    if classes is None:
        advice = (f"data.classes defaults to the 20 Pascal VOC classes; name your own, e.g. "
                  f"--set \"data.classes=[{', '.join(sorted(seen))}]\" (the order is the "
                  f"label order)")
    else:
        advice = f"data.classes is {list(classes)}: add them, or correct the XML files"
    return "VOC annotations name classes that are not in data.classes: " + \
        ", ".join(details) + "; " + advice


class VOCDetection(DetectionDataset):
    """Pascal VOC ``image_set`` (``train``, ``val``, ``trainval`` or ``test``) of ``year``
    under ``root``, or (``from_paths``) any VOC-format folders.

    Args:
        root: the ``VOCdevkit`` folder, its parent, or ``VOC<year>`` itself.
        image_set: the split listed in ``ImageSets/Main/<image_set>.txt``.
        classes: the class names the XML files use, in label order (default: the 20
            VOC classes); an object of another class is an error.
        use_difficult: keep ``difficult`` objects in the training targets.
        verify_images: open every image header now.
    """

    def __init__(self, root: str | os.PathLike, image_set: str = "trainval", *,
                 year: str = "2007", classes: Sequence[str] | None = None,
                 use_difficult: bool = False, verify_images: bool = False) -> None:
        folder = find_voc(root, year)
        split_file = folder / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            raise DatasetError(f"Pascal VOC {year} split {image_set!r} not found: {split_file} "
                               f"does not exist. {VOC_HELP}")
        self._read(folder / "JPEGImages", folder / "Annotations", read_split_file(split_file),
                   source=split_file, classes=classes, use_difficult=use_difficult,
                   verify_images=verify_images)

    @classmethod
    def from_paths(cls, images: str | os.PathLike, annotations: str | os.PathLike, *,
                   classes: Sequence[str] | None = None, use_difficult: bool = False,
                   verify_images: bool = False) -> VOCDetection:
        """A VOC-format split by paths: ``annotations`` a folder of XML files (each one an
        image of the folder ``images``), or a split file of image ids with ``images`` the
        folder that holds ``Annotations/`` and ``JPEGImages/`` (or a ``JPEGImages``-like
        image folder beside ``Annotations/``)."""
        images, annotations = Path(images), Path(annotations)
        for path in (images, annotations):
            if not path.exists():
                raise DatasetError(f"{path} does not exist")
        if annotations.suffix.lower() == ".json":
            raise DatasetError(f"{annotations} is a JSON file, not VOC XML: for COCO-format "
                               f"annotations set data.dataset: coco")
        if annotations.is_dir():
            file_ids = sorted(p.stem for p in annotations.iterdir()
                              if p.suffix.lower() == ".xml" and not p.name.startswith("."))
            if not file_ids:
                raise DatasetError(f"{annotations} holds no .xml annotation files")
            image_dir, xml_dir = images, annotations
        elif (images / "Annotations").is_dir():
            image_dir, xml_dir = images / "JPEGImages", images / "Annotations"
            file_ids = read_split_file(annotations)
        elif (images.parent / "Annotations").is_dir():
            image_dir, xml_dir = images, images.parent / "Annotations"
            file_ids = read_split_file(annotations)
        else:
            raise DatasetError(f"{annotations} is a split file of image ids, so {images} must "
                               f"be the VOC folder holding Annotations/ and JPEGImages/ (or an "
                               f"image folder beside Annotations/); or give the folder of XML "
                               f"files instead of the split file")
        dataset = cls.__new__(cls)
        dataset._read(image_dir, xml_dir, file_ids, source=annotations, classes=classes,
                      use_difficult=use_difficult, verify_images=verify_images)
        return dataset

    def _read(self, image_dir: Path, xml_dir: Path, file_ids: list[str], *, source: Path,
              classes: Sequence[str] | None, use_difficult: bool, verify_images: bool) -> None:
        self.image_dir, self.annotation_dir, self.source = image_dir, xml_dir, str(source)
        self.file_ids = file_ids
        self.class_names = list(VOC_CLASSES if classes is None else classes)
        self.label_to_category_id = list(range(1, len(self.class_names) + 1))
        self.image_ids = list(range(len(file_ids)))
        self.use_difficult = use_difficult
        class_to_label = {name: label for label, name in enumerate(self.class_names)}
        self._records = [parse_voc_xml(self.xml_path(i)) for i in range(len(file_ids))]
        unknown: Counter = Counter()
        first_file: dict[str, Path] = {}
        seen: set[str] = set()
        for index, record in enumerate(self._records):
            seen.update(record["names"])
            for name in record["names"]:
                if name not in class_to_label:
                    unknown[name] += 1
                    first_file.setdefault(name, self.xml_path(index))
        if unknown:
            raise DatasetError(_unknown_classes_message(unknown, first_file, seen, classes))
        for record in self._records:
            record["labels"] = [class_to_label[name] for name in record["names"]]
        self._files = self._image_files()
        self.check_files(source, verify_images)

    def _image_files(self) -> list[str]:
        """Each image's file in ``image_dir``: the XML's ``<filename>`` if that file is
        there, else the id with the first image suffix there (``.jpg`` if none)."""
        listing = set(os.listdir(self.image_dir)) if self.image_dir.is_dir() else set()

        def exists(name: str) -> bool:
            return name in listing if "/" not in name else (self.image_dir / name).is_file()

        files = []
        for file_id, record in zip(self.file_ids, self._records):
            candidates = [record["filename"]] if record["filename"] else []
            candidates += [file_id + suffix for suffix in IMAGE_SUFFIXES]
            files.append(next((name for name in candidates if exists(name)),
                              f"{file_id}.jpg"))
        return files

    def xml_path(self, index: int) -> Path:
        return self.annotation_dir / f"{self.file_ids[index]}.xml"

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._files[index]

    def annotations(self, index: int) -> dict[str, Any]:
        """All objects of an image, ``difficult`` ones included (for evaluation)."""
        return self._records[index]

    def load(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        record = self._records[index]
        keep = [i for i, hard in enumerate(record["difficult"]) if self.use_difficult or not hard]
        image = self.read_image(index, (record["height"], record["width"]), self.xml_path(index))
        return image, make_target([record["boxes"][i] for i in keep],
                                  [record["labels"][i] for i in keep], self.image_ids[index])

    def coco_gt(self):
        images, annotations = [], []
        for index, record in enumerate(self._records):
            images.append({"id": self.image_ids[index], "file_name": self._files[index],
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
