"""What every detection dataset of fcos_fast shares: the sample format, image decoding,
errors that name the offending file, and the ground truth in COCO form for evaluation.

A dataset item is ``(image, target)``: ``image`` a ``[3, H, W]`` float32 tensor in
``[0, 1]``; ``target`` a dict with ``boxes`` ``[G, 4]`` float32 ``(x1, y1, x2, y2)`` in
pixels, ``labels`` ``[G]`` int64 in ``[0, num_classes)`` and ``image_id`` (int, the id of
the image in ``coco_gt()``). Boxes are those the model trains on (no crowd regions, no
boxes without area); evaluation uses ``coco_gt()`` instead, which keeps everything.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset


class DatasetError(RuntimeError):
    """A dataset that is missing, or a file of it that cannot be used (named in the message)."""


class ImageReadError(DatasetError):
    """An image file that cannot be decoded (or is not there)."""


@dataclass(frozen=True)
class Categories:
    """The classes of a dataset or a detector: label ``i`` is the class ``names[i]``,
    whose category id in the dataset's annotations is ``ids[i]``."""

    names: tuple[str, ...]
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        if len(self.names) != len(self.ids):
            raise ValueError(f"{len(self.names)} class names but {len(self.ids)} category ids")

    def __len__(self) -> int:
        return len(self.names)

    def describe(self, limit: int = 8) -> str:
        """``cat (7), dog (42)``: names with their category ids (the first ``limit``)."""
        items = [f"{name} ({id_})" for name, id_ in zip(self.names, self.ids)]
        more = f", ... ({len(items)} in all)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    def difference(self, other: Categories, this: str, that: str) -> str | None:
        """What differs from ``other`` (by name and category id, in label order), in words
        naming the two sides ``this`` and ``that``; None when they are the same."""
        if self == other:
            return None
        mine, theirs = set(zip(self.names, self.ids)), set(zip(other.names, other.ids))
        parts = []
        for side, items, absent in ((this, self, theirs), (that, other, mine)):
            only = [f"{name} ({id_})" for name, id_ in zip(items.names, items.ids)
                    if (name, id_) not in absent]
            if only:
                parts.append(f"only {side} has {', '.join(only[:8])}"
                             + (f" and {len(only) - 8} more" if len(only) > 8 else ""))
        if not parts:
            parts.append(f"the same classes in another order ({this}: {self.describe()}; "
                         f"{that}: {other.describe()})")
        return "; ".join(parts)


#: The EXIF tag of a photo's orientation.
EXIF_ORIENTATION = 0x0112


def data_home() -> Path:
    """The folder of the user's datasets: ``$FCOS_FAST_DATA`` or ``./data``."""
    return Path(os.environ.get("FCOS_FAST_DATA", "data"))


def data_root(default_name: str) -> Path:
    """Default folder of a user's dataset: ``$FCOS_FAST_DATA/<name>`` or ``./data/<name>``."""
    return data_home() / default_name


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to ``[3, H, W]`` float32 in ``[0, 1]`` (RGB).

    Raises:
        ImageReadError: the file is missing or cannot be decoded; the message names it.
    """
    try:
        with Image.open(path) as image:
            # Upright as annotation tools show it (browsers apply the EXIF orientation of
            # camera photos; their boxes are in that frame), as detectron2 reads images.
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)
            array = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    # In numpy: a few small torch ops per image cost more than the decoding when the
    # training process holds every core.
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    chw *= 1 / 255
    return torch.from_numpy(chw)


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Check that an image file is readable; returns its ``(width, height)``."""
    try:
        with Image.open(path) as image:
            image.verify()
            return image.size
    except Exception as error:  # PIL raises many types for a corrupt file
        raise DatasetError(f"corrupt image {path}: {error}") from error


def quiet_coco(dataset: dict[str, Any]):
    """A ``pycocotools.coco.COCO`` over an in-memory annotation dict (its prints muted)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


class DetectionDataset(Dataset):
    """Base class: subclasses fill the attributes below and implement ``load``.

    Attributes:
        class_names: one name per contiguous label.
        label_to_category_id: the COCO category id of each label (for evaluation).
        image_ids: the ``coco_gt()`` id of each item.
        source: what the annotations were read from (for messages).
    """

    class_names: list[str]
    label_to_category_id: list[int]
    image_ids: list[int]
    source: str = "the dataset"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def categories(self) -> Categories:
        return Categories(tuple(self.class_names), tuple(self.label_to_category_id))

    def require_categories(self, categories: Categories, of: str) -> None:
        """Raise ``DatasetError`` unless this dataset's classes are ``categories`` (those
        of ``of``: a checkpoint, the training set), by name and category id, in order."""
        difference = categories.difference(self.categories, of, str(self.source))
        if difference is not None:
            raise DatasetError(f"the classes of {of} are not those of {self.source}: "
                               f"{difference}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        return self.load(index)

    def load(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def coco_gt(self):
        """The ground truth as a ``pycocotools`` ``COCO`` object, for ``COCOeval``."""
        raise NotImplementedError

    def check_files(self, listed_in: str | os.PathLike, verify: bool = False) -> None:
        """Raise ``DatasetError`` if an image is missing (one directory listing per
        folder, not a ``stat`` per file) or, with ``verify``, unreadable."""
        listings: dict[Path, set[str]] = {}
        missing = []
        for index in range(len(self)):
            path = self.image_path(index)
            if path.parent not in listings:
                listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() \
                    else set()
            if path.name not in listings[path.parent]:
                missing.append(str(path))
        if missing:
            raise DatasetError(f"{len(missing)} of the {len(self)} image(s) listed in "
                               f"{listed_in} do not exist, e.g. {missing[:3]}")
        if verify:
            for index in range(len(self)):
                verify_image(self.image_path(index))

    def read_image(self, index: int, size: tuple[int, int], described_by: str | os.PathLike
                   ) -> Tensor:
        """Image ``index``, checked to be ``size = (height, width)`` as annotated."""
        image = load_image(self.image_path(index))
        if tuple(image.shape[1:]) != tuple(size):
            raise DatasetError(f"image {self.image_path(index)} is {image.shape[2]}x"
                               f"{image.shape[1]} but {described_by} says {size[1]}x{size[0]}")
        return image


def make_target(boxes: list[list[float]], labels: list[int], image_id: int) -> dict[str, Any]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
    }
