"""The FCOS detector on ``fcos_fast.ops``.

``FCOS(num_classes, backbone="resnet50")`` builds the model; ``from_torchvision(model)``
builds it from a ``torchvision.models.detection.FCOS`` (weights and settings).
"""

from fcos_fast.model.backbone import FPN_STRIDES, RESNETS, resnet_fpn_backbone
from fcos_fast.model.fcos import FCOS, FCOSInputError
from fcos_fast.model.head import FCOSHead, HeadOutputs
from fcos_fast.model.torchvision_compat import from_torchvision

__all__ = ["FCOS", "FCOSInputError", "FCOSHead", "HeadOutputs", "from_torchvision",
           "resnet_fpn_backbone", "RESNETS", "FPN_STRIDES"]
