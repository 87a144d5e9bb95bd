"""The FCOS head: two conv towers shared across pyramid levels.

The classification tower predicts per-class logits; the regression tower predicts the
four side distances and, on the same features, the centerness logit (centerness on the
regression branch, as in the FCOS journal version and torchvision).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class HeadOutputs(NamedTuple):
    """Raw head predictions, all levels concatenated along the point dimension.

    Attributes:
        cls_logits: ``[B, P, C]`` classification logits.
        box_regression: ``[B, P, 4]`` non-negative distances ``(l, t, r, b)`` from each
            point to its box sides, in units of the point's level stride.
        centerness: ``[B, P]`` centerness logits.
    """

    cls_logits: Tensor
    box_regression: Tensor
    centerness: Tensor

    def float(self) -> HeadOutputs:
        """The outputs in float32, where the losses and post-processing compute; the
        tensors themselves when they already are (``Tensor.float()`` of a float32 tensor
        returns it too, but still dispatches an operator)."""
        return HeadOutputs(*(value if value.dtype == torch.float32 else value.float()
                             for value in self))


def _conv_tower(channels: int, num_convs: int, norm_groups: int) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, GroupNorm, ReLU), the layer order torchvision uses."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                   nn.GroupNorm(norm_groups, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _flatten_level(prediction: Tensor) -> Tensor:
    """``[B, K, H, W] -> [B, H*W, K]``: one row per point, row-major like the points."""
    return prediction.flatten(2).transpose(1, 2)


class FCOSHead(nn.Module):
    """Shared FCOS head.

    Args:
        in_channels: channels of every pyramid level (the FPN width, 256).
        num_classes: number of object classes C (no background class: a point whose
            class scores are all low is background).
        num_convs: conv layers per tower.
        norm_groups: GroupNorm groups.
        prior_probability: initial foreground probability of every class; the
            classification bias starts at ``-log((1 - p) / p)`` so that the focal loss of
            the many background points does not swamp the first iterations
            (RetinaNet, section 4.1).
        centerness_bias: initial centerness logit.
    """

    def __init__(self, in_channels: int, num_classes: int, *, num_convs: int = 4,
                 norm_groups: int = 32, prior_probability: float = 0.01,
                 centerness_bias: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _conv_tower(in_channels, num_convs, norm_groups)
        self.reg_tower = _conv_tower(in_channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.box_regression = nn.Conv2d(in_channels, 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias,
                          -math.log((1 - prior_probability) / prior_probability))
        nn.init.constant_(self.centerness.bias, centerness_bias)

    def forward(self, features: list[Tensor]) -> HeadOutputs:
        """Run the head on every level.

        Args:
            features: ``[B, in_channels, H_l, W_l]`` per level.

        Returns:
            ``HeadOutputs`` with ``P = sum(H_l * W_l)``.
        """
        cls_logits, box_regression, centerness = [], [], []
        for level in features:
            # A channels-last backbone (CPU training) hands over channels-last features;
            # the head's GroupNorm is fastest contiguous (see engine.precision).
            level = level.contiguous()
            cls_features = self.cls_tower(level)
            reg_features = self.reg_tower(level)
            cls_logits.append(_flatten_level(self.cls_logits(cls_features)))
            # ReLU keeps the distances non-negative; they are already normalised by the
            # stride, so no per-level scale or exp is needed (torchvision's variant).
            box_regression.append(_flatten_level(torch.relu(self.box_regression(reg_features))))
            centerness.append(self.centerness(reg_features).flatten(1))
        return HeadOutputs(torch.cat(cls_logits, dim=1), torch.cat(box_regression, dim=1),
                           torch.cat(centerness, dim=1))
