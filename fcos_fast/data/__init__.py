"""Datasets, augmentation and loaders.

``build_dataset(config, split)`` gives the dataset a config names (the built-in synthetic
shapes, COCO-format or VOC-format data by paths, or COCO 2017 / Pascal VOC 2007 under a
root); items are ``(image [3, H, W] in [0, 1], target)``
with ``target = {"boxes": [G, 4] xyxy, "labels": [G] int64, "image_id": int}``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from fcos_fast.config import DATASETS, SPLIT_PATHS, Config
from fcos_fast.data.coco import CocoDetection
from fcos_fast.data.common import (Categories, DatasetError, DetectionDataset, ImageReadError,
                                   data_root, load_image)
from fcos_fast.data.loader import (AugmentedDataset, InferenceSampler, TrainingSampler, collate,
                                   test_loader, train_loader)
from fcos_fast.data.synthetic import ensure_synthetic, synthetic_dataset
from fcos_fast.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge
from fcos_fast.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "DATASETS", "AugmentedDataset", "Categories", "CocoDetection", "Compose", "DatasetError",
    "DetectionDataset", "ImageReadError", "InferenceSampler", "RandomHorizontalFlip",
    "ResizeShortestEdge", "TrainingSampler", "VOCDetection", "VOC_CLASSES", "build_dataset",
    "build_train_transform", "collate", "ensure_synthetic", "load_image", "synthetic_dataset",
    "test_loader", "train_loader", "with_absolute_paths",
]


def build_dataset(config: Config, split: str, *, train: bool = False) -> DetectionDataset:
    """The ``split`` of the dataset ``config.data`` names: by its paths
    (``data.train_images``/``train_annotations`` for ``data.train_split``, ``val_*`` for
    ``data.val_split``) or by ``data.root``.

    ``train`` applies the training-only options (``filter_empty``, ``use_difficult``).
    """
    data = config.data
    if data.dataset == "synthetic":
        return synthetic_dataset(data.synthetic, split, data.root,
                                 filter_empty=train and data.filter_empty,
                                 verify_images=data.verify_images)
    role = data.split_role(split)
    if role is None and data.root is None and (data.train_images or data.val_images):
        raise DatasetError(f"split {split!r} is neither data.train_split ({data.train_split!r}) "
                           f"nor data.val_split ({data.val_split!r}), the splits given by "
                           f"paths; name one of those, or set data.val_images and "
                           f"data.val_annotations to the files of {split!r}")
    if role is not None:
        images, annotations = _existing_paths(data, role)
    if data.dataset == "coco":
        if role is None:
            root = (data_root(_DEFAULT_ROOTS["coco"]) if data.root is None
                    else Path(data.root).expanduser())
            images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
        return CocoDetection(images, annotations, classes=data.classes,
                             filter_empty=train and data.filter_empty,
                             verify_images=data.verify_images)
    options = {"classes": data.classes, "use_difficult": train and data.use_difficult,
               "verify_images": data.verify_images}
    if role is not None:
        return VOCDetection.from_paths(images, annotations, **options)
    root = (data_root(_DEFAULT_ROOTS["voc"]) if data.root is None
            else Path(data.root).expanduser())
    return VOCDetection(root, split, **options)


def _existing_paths(data, role: str) -> tuple[Path, Path]:
    """The image and annotation paths of split ``role`` (``SPLIT_PATHS``), checked to
    exist (the error names the key)."""
    keys = SPLIT_PATHS[role]
    images, annotations = (Path(getattr(data, key)).expanduser() for key in keys)
    for key, path in ((keys[1], annotations), (keys[0], images)):
        if not path.exists():
            raise DatasetError(f"data.{key} {path} does not exist")
    if not images.is_dir():
        raise DatasetError(f"data.{keys[0]} {images} is not a folder (it names the folder "
                           f"the images are in)")
    return images, annotations


def with_absolute_paths(config: Config) -> Config:
    """``config`` with its data paths absolute (``~`` expanded): a run's saved config then
    reads the same data from any working folder. A COCO or VOC root left to its default
    (``$FCOS_FAST_DATA`` or ``./data``) is written out when a split is read from it."""
    data = config.data
    keys = ["root", *(key for pair in SPLIT_PATHS.values() for key in pair)]
    changes = {key: os.path.abspath(os.path.expanduser(getattr(data, key)))
               for key in keys if getattr(data, key) is not None}
    by_root = not (data.train_images and data.val_images)
    if data.root is None and by_root and data.dataset in _DEFAULT_ROOTS:
        changes["root"] = os.path.abspath(data_root(_DEFAULT_ROOTS[data.dataset]))
    return dataclasses.replace(config, data=dataclasses.replace(data, **changes))


#: The folder of ``data_home()`` each dataset read by root defaults to.
_DEFAULT_ROOTS = {"coco": "coco", "voc": "VOCdevkit"}


def build_train_transform(config: Config) -> Compose:
    """Resize (shorter side drawn from ``input.min_size_train``) then horizontal flip."""
    return Compose([ResizeShortestEdge(config.input.min_size_train, config.input.max_size_train),
                    RandomHorizontalFlip(config.input.hflip_prob)])
