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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset


class DatasetError(RuntimeError):
    """A dataset that is missing, or a file of it that cannot be used (named in the message)."""


def data_home() -> Path:
    """The folder of the user's datasets: ``$FCOS_FAST_DATA`` or ``./data``."""
    return Path(os.environ.get("FCOS_FAST_DATA", "data"))


def data_root(default_name: str) -> Path:
    """Default folder of a user's dataset: ``$FCOS_FAST_DATA/<name>`` or ``./data/<name>``."""
    return data_home() / default_name


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to ``[3, H, W]`` float32 in ``[0, 1]`` (RGB).

    Raises:
        DatasetError: the file is missing or cannot be decoded; the message names it.
    """
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
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
    """

    class_names: list[str]
    label_to_category_id: list[int]
    image_ids: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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
            raise DatasetError(f"{len(missing)} image(s) listed in {listed_in} do not exist, "
                               f"e.g. {missing[:3]}")
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
