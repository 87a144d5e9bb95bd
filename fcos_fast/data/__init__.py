"""Datasets, augmentation and loaders.

``build_dataset(config, split)`` gives the dataset a config names (the built-in synthetic
shapes, COCO 2017 or Pascal VOC 2007); items are ``(image [3, H, W] in [0, 1], target)``
with ``target = {"boxes": [G, 4] xyxy, "labels": [G] int64, "image_id": int}``.
"""

from __future__ import annotations

from pathlib import Path

from fcos_fast.config import Config
from fcos_fast.data.coco import CocoDetection
from fcos_fast.data.common import DatasetError, DetectionDataset, data_root, load_image
from fcos_fast.data.loader import (AugmentedDataset, InferenceSampler, TrainingSampler, collate,
                                   test_loader, train_loader)
from fcos_fast.data.synthetic import ensure_synthetic, synthetic_dataset
from fcos_fast.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge
from fcos_fast.data.voc import VOC_CLASSES, VOCDetection

DATASETS = ("synthetic", "coco", "voc")

__all__ = [
    "DATASETS", "AugmentedDataset", "CocoDetection", "Compose", "DatasetError",
    "DetectionDataset", "InferenceSampler", "RandomHorizontalFlip", "ResizeShortestEdge",
    "TrainingSampler", "VOCDetection", "VOC_CLASSES", "build_dataset", "build_train_transform",
    "collate", "ensure_synthetic", "load_image", "synthetic_dataset", "test_loader",
    "train_loader",
]


def build_dataset(config: Config, split: str, *, train: bool = False) -> DetectionDataset:
    """The ``split`` of the dataset ``config.data`` names.

    ``train`` applies the training-only options (``filter_empty``, ``use_difficult``).
    """
    data = config.data
    if data.dataset == "synthetic":
        return synthetic_dataset(data.synthetic, split, data.root,
                                 filter_empty=train and data.filter_empty,
                                 verify_images=data.verify_images)
    if data.dataset == "coco":
        root = data_root("coco") if data.root is None else Path(data.root)
        return CocoDetection(root / split, root / "annotations" / f"instances_{split}.json",
                             filter_empty=train and data.filter_empty,
                             verify_images=data.verify_images)
    if data.dataset == "voc":
        root = data_root("VOCdevkit") if data.root is None else data.root
        return VOCDetection(root, split, use_difficult=train and data.use_difficult,
                            verify_images=data.verify_images)
    raise ValueError(f"data.dataset must be one of {DATASETS}, got {data.dataset!r}")


def build_train_transform(config: Config) -> Compose:
    """Resize (shorter side drawn from ``input.min_size_train``) then horizontal flip."""
    return Compose([ResizeShortestEdge(config.input.min_size_train, config.input.max_size_train),
                    RandomHorizontalFlip(config.input.hflip_prob)])
