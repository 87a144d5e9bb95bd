"""ResNet + FPN (P3-P7) backbone built from torchvision's pieces.

The same network torchvision's ``fcos_resnet50_fpn`` builds: a torchvision ResNet whose
stages C3-C5 feed a ``FeaturePyramidNetwork`` (256 channels), and ``LastLevelP6P7``
computing P6 and P7 from P5. Nothing is downloaded: pretrained weights come from a
local file.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: Nominal strides of P3-P7.
FPN_STRIDES = (8, 16, 32, 64, 128)

# ResNet stages from the last one backwards, in the order they become trainable; "bn1"
# goes with "conv1" when the whole network is trained (torchvision's convention).
_STAGES_FROM_TOP = ("layer4", "layer3", "layer2", "layer1", "conv1")


class LastLevelP6P7Float32(LastLevelP6P7):
    """torchvision's P6/P7 block (same parameters and names), computed in float32.

    Under bfloat16 autocast on the CPU, oneDNN's weight gradient of a 3x3 stride-2
    convolution over a 1x1 input is garbage on some CPUs (uninitialised memory: values of
    1e38, inf or NaN, different on every call; seen with torch 2.14.1 on an AMX Xeon) —
    and P6/P7 see 1x1 inputs for images up to 64 px. Both levels are tiny (P6 has 1/64 of
    P3's points), so float32 costs next to nothing here.
    """

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]
                ) -> tuple[list[Tensor], list[str]]:
        source = p[-1] if self.use_P5 else c[-1]
        with torch.autocast(source.device.type, enabled=False):
            p6 = self.p6(source.float())
            p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


def resnet_fpn_backbone(name: str = "resnet50", *, weights_path: str | os.PathLike | None = None,
                        trainable_layers: int | None = None,
                        norm_layer: Callable[..., nn.Module] | None = None,
                        out_channels: int = 256) -> BackboneWithFPN:
    """A ResNet-FPN returning P3-P7 as an ordered dict ``{"0", "1", "2", "p6", "p7"}``.

    Args:
        name: one of ``RESNETS``.
        weights_path: a torchvision ResNet ``state_dict`` file (e.g. the ImageNet
            checkpoint from torchvision's cache); ``None`` leaves the weights random.
            The classifier (``fc.*``) entries are ignored.
        trainable_layers: how many stages, counted from ``layer4`` down to ``conv1``, are
            trained (0-5). Default: 3 with pretrained weights, else 5 (all).
        norm_layer: the ResNet's normalisation. Default: ``FrozenBatchNorm2d`` with
            pretrained weights (detection batches are too small to re-estimate ImageNet
            statistics), else ``nn.BatchNorm2d``. These defaults are torchvision's.
        out_channels: FPN width.

    Returns:
        torchvision's ``BackboneWithFPN``, with an ``out_channels`` attribute; for an input
        ``[B, 3, H, W]`` level ``l`` has shape ``[B, out_channels, ~H / s_l, ~W / s_l]``
        with ``s_l`` in ``FPN_STRIDES``.
    """
    if name not in RESNETS:
        raise ValueError(f"backbone must be one of {RESNETS}, got {name!r}")
    pretrained = weights_path is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    if norm_layer is None:
        norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d

    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    if pretrained:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as error:  # same names, other shapes
            raise ValueError(f"{weights_path} is not a torchvision {name} state_dict: "
                             f"{error}") from error
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} is not a torchvision {name} state_dict: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    trained = _STAGES_FROM_TOP[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for parameter_name, parameter in resnet.named_parameters():
        if not parameter_name.startswith(trained):
            parameter.requires_grad_(False)

    # C3, C4, C5 feed the FPN; P6 and P7 come from P5 (in_channels == out_channels), as
    # in the FCOS paper and torchvision.
    stage_channels = resnet.inplanes // 8  # channels of layer1's output
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[stage_channels * 2, stage_channels * 4, stage_channels * 8],
        out_channels=out_channels,
        extra_blocks=LastLevelP6P7Float32(out_channels, out_channels),
    )
