"""ResNet + FPN (P3-P7) backbone built from torchvision's pieces.

The same network torchvision's ``fcos_resnet50_fpn`` builds: a torchvision ResNet whose
stages C3-C5 feed a ``FeaturePyramidNetwork`` (256 channels), and ``LastLevelP6P7``
computing P6 and P7 from P5. Pretrained ResNet weights are a local ``state_dict`` file or
a torchvision weights name (``IMAGENET1K_V1``), which torchvision's weights API
downloads into the torch hub cache the first time (``backbone_weights_file``).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: Nominal strides of P3-P7.
FPN_STRIDES = (8, 16, 32, 64, 128)

# ResNet stages from the last one backwards, in the order they become trainable; "bn1"
# goes with "conv1" when the whole network is trained (torchvision's convention).
_STAGES_FROM_TOP = ("layer4", "layer3", "layer2", "layer1", "conv1")


class WeightsError(ValueError):
    """Weights that cannot be found, downloaded or used; the message is one line naming
    the file (or weights name) and what to do."""


# A weights name: "IMAGENET1K_V1", "DEFAULT" or "ResNet18_Weights.IMAGENET1K_V1"; anything
# else (a separator, a suffix) is taken for a path.
_WEIGHTS_NAME = re.compile(r"^(?:\w+_Weights\.)?[A-Za-z0-9_]+$")


def backbone_weights_file(backbone: str, weights: str | os.PathLike) -> Path:
    """The local ``state_dict`` file that ``weights`` stands for.

    Args:
        backbone: the torchvision model the weights are for (``"resnet18"``).
        weights: a path to a ``state_dict`` file, or the name of one of torchvision's
            weights of ``backbone``: ``"IMAGENET1K_V1"``, ``"DEFAULT"`` or
            ``"ResNet18_Weights.IMAGENET1K_V1"``. A name resolves to the file torchvision
            caches in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``),
            downloaded through torchvision's weights API (hash-checked) when it is not
            there yet; a cached file is used without any network access.

    Raises:
        WeightsError: the path does not exist, the name is not one of ``backbone``'s (the
            message lists them), or the file is not cached and cannot be downloaded (the
            message names the file and the folder to put it in).
    """
    path = Path(weights)
    if path.is_file() or not _WEIGHTS_NAME.match(str(weights)):
        if not path.is_file():
            raise WeightsError(f"backbone weights file {path} does not exist (give a "
                               f"torchvision state_dict file, or a weights name such as "
                               f"IMAGENET1K_V1)")
        return path
    entry = torchvision_weights(backbone, str(weights))
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)
    if not file.is_file():
        try:
            # torch.hub announces a download on stdout before it tries: say it only once
            # it worked, so that an offline attempt gives the error line alone.
            with contextlib.redirect_stdout(io.StringIO()):
                entry.get_state_dict(progress=True, check_hash=True)  # into the cache
        except (OSError, http.client.HTTPException, RuntimeError) as error:
            # OSError covers URLError, timeouts and DNS failures; RuntimeError a bad hash.
            raise WeightsError(
                f"{entry} ({file.name}) is not in the torch hub cache and cannot be "
                f"downloaded from {entry.url} ({' '.join(str(error).split())}): put "
                f"{file.name} in {file.parent}/") from None
        logger.info("downloaded %s (%s) into %s", entry, file.name, file.parent)
    return file


def torchvision_weights(backbone: str, name: str) -> WeightsEnum:
    """The torchvision weights of ``backbone`` called ``name`` (``IMAGENET1K_V1``,
    ``DEFAULT``, or with the enum's name, ``ResNet18_Weights.IMAGENET1K_V1``)."""
    enum = get_model_weights(backbone)
    member = name.removeprefix(f"{enum.__name__}.")
    if member not in enum.__members__:
        raise WeightsError(f"{name!r} is neither a file nor a torchvision weights name of "
                           f"{backbone}: use one of {', '.join(enum.__members__)} (from "
                           f"{enum.__name__}) or the path of a state_dict file")
    return enum[member]


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``state_dict`` saved with ``torch.save`` (tensors only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a bad file
        reason = " ".join(str(error).split())[:200]
        raise WeightsError(f"cannot read weights file {path} ({reason}); if it is a torch hub "
                           f"download, delete it to download it again") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


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
            p6 = self.p6(source.to(self.p6.weight.dtype))  # float32, or float64 for .double()
            p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


def resnet_fpn_backbone(name: str = "resnet50", *, weights: str | os.PathLike | None = None,
                        pretrained: bool | None = None, trainable_layers: int | None = None,
                        norm_layer: Callable[..., nn.Module] | None = None,
                        out_channels: int = 256) -> BackboneWithFPN:
    """A ResNet-FPN returning P3-P7 as an ordered dict ``{"0", "1", "2", "p6", "p7"}``.

    Args:
        name: one of ``RESNETS``.
        weights: pretrained ResNet weights: a torchvision weights name such as
            ``"IMAGENET1K_V1"`` (downloaded into the torch hub cache on first use), or a
            torchvision ResNet ``state_dict`` file (see ``backbone_weights_file``);
            ``None`` leaves the weights random. The classifier (``fc.*``) entries are
            ignored.
        pretrained: lay the network out for pretrained weights (the defaults below);
            default: whether ``weights`` is given. ``pretrained=True`` without ``weights``
            builds that network without reading any file, for a checkpoint of a
            pretrained run to fill.
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

    Raises:
        WeightsError: ``weights`` cannot be found, downloaded or loaded into ``name``.
    """
    if name not in RESNETS:
        raise ValueError(f"backbone must be one of {RESNETS}, got {name!r}")
    if pretrained is None:
        pretrained = weights is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    if norm_layer is None:
        norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d

    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    if weights is not None:
        path = backbone_weights_file(name, weights)
        state = load_state_dict_file(path)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as error:  # same names, other shapes
            raise WeightsError(f"{path} is not a torchvision {name} state_dict: "
                               f"{' '.join(str(error).split())[:300]}") from None
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise WeightsError(
                f"{path} is not a torchvision {name} state_dict: "
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
