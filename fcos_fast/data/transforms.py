"""Training augmentation: resize (shorter side drawn from a list) and horizontal flip.

Each transform maps ``(image [3, H, W], target, generator) -> (image, target)``; the
randomness comes only from the ``torch.Generator`` passed in, which the training sampler
seeds per sample, so an epoch's augmentation is the same however many loader workers
there are and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Target = dict[str, Any]


class ResizeShortestEdge:
    """Scale the shorter side to one of ``min_sizes`` (drawn uniformly), the longer to at most
    ``max_size`` (the same rule as the model's own resize, ``GeneralizedRCNNTransform``)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        if not min_sizes or min(min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"bad resize sizes {list(min_sizes)}, max {max_size}")
        self.min_sizes = list(min_sizes)
        self.max_size = max_size

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator
                 ) -> tuple[Tensor, Target]:
        choice = int(torch.randint(len(self.min_sizes), (), generator=generator))
        height, width = image.shape[-2:]
        scale = min(self.min_sizes[choice] / min(height, width), self.max_size / max(height, width))
        new_height, new_width = round(height * scale), round(width * scale)
        if (new_height, new_width) == (height, width):
            return image, target
        image = F.interpolate(image[None], size=(new_height, new_width), mode="bilinear",
                              align_corners=False)[0]
        factors = torch.tensor([new_width / width, new_height / height] * 2)
        return image, {**target, "boxes": target["boxes"] * factors}


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator
                 ) -> tuple[Tensor, Target]:
        if float(torch.rand((), generator=generator)) >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) \
            + torch.tensor([width, 0, width, 0])
        return image.flip(-1), {**target, "boxes": boxes}


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator
                 ) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target
