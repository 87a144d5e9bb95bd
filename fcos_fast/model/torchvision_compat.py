"""Build our FCOS from a torchvision FCOS: its weights and its settings.

This is how a user starts from torchvision's COCO checkpoint, and the proof that the
pipeline is right: with torchvision's choices (per-level top-k, centerness weight 1) the
two models give the same losses and the same detections on the same inputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_fast.model.backbone import resnet_fpn_backbone
from fcos_fast.model.fcos import FCOS

# (block type, blocks per stage) -> torchvision constructor name.
_RESNET_LAYOUTS = {
    (BasicBlock, (2, 2, 2, 2)): "resnet18",
    (BasicBlock, (3, 4, 6, 3)): "resnet34",
    (Bottleneck, (3, 4, 6, 3)): "resnet50",
    (Bottleneck, (3, 4, 23, 3)): "resnet101",
    (Bottleneck, (3, 8, 36, 3)): "resnet152",
}

# torchvision FCOSHead parameter prefixes -> ours (the conv towers have the same
# (conv, GroupNorm, ReLU) layer order, so their indices carry over).
_HEAD_PREFIXES = {
    "classification_head.conv.": "cls_tower.",
    "classification_head.cls_logits.": "cls_logits.",
    "regression_head.conv.": "reg_tower.",
    "regression_head.bbox_reg.": "box_regression.",
    "regression_head.bbox_ctrness.": "centerness.",
}


def from_torchvision(tv_model: TorchvisionFCOS, *, backend: str | None = None,
                     candidates: str = "per_level", centerness_weight: float = 1.0) -> FCOS:
    """Our ``FCOS`` with the weights and settings of a torchvision ``FCOS``.

    Copied: the backbone (rebuilt by ``resnet_fpn_backbone`` when it is a standard
    ResNet-FPN, otherwise deep-copied), the head weights, the resize and normalisation,
    the point strides (anchor sizes), ``center_sampling_radius``, ``score_thresh``,
    ``nms_thresh``, ``topk_candidates``, ``detections_per_img``, which backbone
    parameters are trainable, and the train/eval mode. The defaults of ``candidates``
    and ``centerness_weight`` are torchvision's choices, under which our losses equal
    its ``classification``, ``bbox_regression`` and ``bbox_ctrness`` and our detections
    equal its detections.

    Args:
        tv_model: a ``torchvision.models.detection.FCOS``, e.g. from ``fcos_resnet50_fpn``.
        backend: ``fcos_fast.ops`` backend of the new model (``None``: automatic).
        candidates: ``"per_level"`` (torchvision's) or ``"per_class"``.
        centerness_weight: weight of the centerness loss (torchvision's is 1).

    Returns:
        A new model on the device and in the dtype of ``tv_model``; it shares no tensors
        with it.
    """
    if not isinstance(tv_model, TorchvisionFCOS):
        raise TypeError(f"expected a torchvision.models.detection.FCOS, got {type(tv_model)}")
    head = tv_model.head
    cls_head, reg_head = head.classification_head, head.regression_head
    if cls_head.num_anchors != 1 or any(len(ratios) != 1 or ratios[0] != 1.0
                                        for ratios in tv_model.anchor_generator.aspect_ratios):
        raise ValueError("FCOS needs one square anchor (a point) per location")
    norms = [layer for layer in cls_head.conv if not isinstance(layer, (nn.Conv2d, nn.ReLU))]
    if not all(isinstance(norm, nn.GroupNorm) and norm.num_groups == 32 for norm in norms):
        raise ValueError("only heads with GroupNorm(32, C), torchvision's default, are supported")

    transform = tv_model.transform
    model = FCOS(
        cls_head.num_classes,
        backbone=_copy_backbone(tv_model.backbone),
        strides=[sizes[0] for sizes in tv_model.anchor_generator.sizes],
        min_size=transform.min_size, max_size=transform.max_size,
        image_mean=transform.image_mean, image_std=transform.image_std,
        size_divisible=transform.size_divisible, fixed_size=transform.fixed_size,
        _skip_resize=transform._skip_resize,
        num_convs=len(norms),
        center_sampling_radius=tv_model.center_sampling_radius,
        centerness_weight=centerness_weight,
        score_thresh=tv_model.score_thresh, nms_thresh=tv_model.nms_thresh,
        topk_candidates=tv_model.topk_candidates,
        detections_per_img=tv_model.detections_per_img,
        candidates=candidates, backend=backend,
    )
    model.head.load_state_dict(_rename_head_state(head.state_dict()))

    reference = next(tv_model.parameters())
    model.to(device=reference.device, dtype=reference.dtype)
    model.train(tv_model.training)
    return model


def _rename_head_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in _HEAD_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected parameter {key!r} in the torchvision FCOS head")
        renamed[_HEAD_PREFIXES[prefix] + key[len(prefix):]] = value
    return renamed


def _copy_backbone(tv_backbone: nn.Module) -> nn.Module:
    """Our ResNet-FPN with ``tv_backbone``'s weights, or a deep copy if it is not one."""
    ours = _rebuild_resnet_fpn(tv_backbone)
    if ours is None:
        return copy.deepcopy(tv_backbone)
    ours.load_state_dict(tv_backbone.state_dict())
    for (_, our_parameter), (_, tv_parameter) in zip(ours.named_parameters(),
                                                     tv_backbone.named_parameters()):
        our_parameter.requires_grad_(tv_parameter.requires_grad)
    return ours


def _rebuild_resnet_fpn(tv_backbone: nn.Module) -> BackboneWithFPN | None:
    """``resnet_fpn_backbone`` of the same architecture as ``tv_backbone``, if there is one.

    "Same" is checked, not assumed: the module types, the parameter and buffer names and
    shapes, and the returned stages must all agree (which rules out ResNeXt, wide ResNets,
    other FPN extra blocks and other returned layers).
    """
    if not isinstance(tv_backbone, BackboneWithFPN):
        return None
    body = tv_backbone.body
    if not all(hasattr(body, f"layer{i}") for i in range(1, 5)):
        return None
    stages = [getattr(body, f"layer{i}") for i in range(1, 5)]
    name = _RESNET_LAYOUTS.get((type(stages[0][0]), tuple(len(stage) for stage in stages)))
    norm_layer = type(body.bn1)
    if name is None or norm_layer not in (nn.BatchNorm2d, FrozenBatchNorm2d):
        return None

    ours = resnet_fpn_backbone(name, norm_layer=norm_layer,
                               out_channels=tv_backbone.out_channels)
    same_modules = ([type(m) for m in ours.modules()] == [type(m) for m in tv_backbone.modules()])
    same_tensors = ({k: v.shape for k, v in ours.state_dict().items()}
                    == {k: v.shape for k, v in tv_backbone.state_dict().items()})
    same_outputs = ours.body.return_layers == body.return_layers
    return ours if same_modules and same_tensors and same_outputs else None
