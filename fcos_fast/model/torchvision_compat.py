"""Build our FCOS from a torchvision FCOS: its weights and its settings.

This is how a user starts from torchvision's COCO checkpoint, and the proof that the
pipeline is right: with torchvision's choices (per-level top-k, centerness weight 1) the
two models give the same losses and the same detections on the same inputs.
``load_torchvision_checkpoint`` reads a ``fcos_resnet50_fpn`` checkpoint file (the
published COCO weights among them); ``CategoryRelabel`` maps its labels, which are COCO
category ids, to a dataset's contiguous labels.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_fast.model.backbone import WeightsError, load_state_dict_file, resnet_fpn_backbone
from fcos_fast.model.fcos import FCOS

#: The class names of torchvision's COCO detectors by label. A label is the COCO category
#: id: ``"__background__"`` (0) and ``"N/A"`` fill the 91 ids COCO leaves unused.
COCO_CATEGORIES: tuple[str, ...] = tuple(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"])

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


def torchvision_fcos_resnet50_fpn(num_classes: int = 91, **kwargs: Any) -> TorchvisionFCOS:
    """torchvision's ``fcos_resnet50_fpn`` as its COCO weights were trained (frozen
    BatchNorm, stem and ``layer1`` frozen), with random weights and no download.

    ``kwargs`` go to torchvision's ``FCOS`` (``min_size``, ``score_thresh``, ...).
    """
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionFCOS(backbone, num_classes, **kwargs)


def load_torchvision_checkpoint(path: str | os.PathLike, *, backend: str | None = None,
                                candidates: str = "per_level", centerness_weight: float = 1.0,
                                **settings: Any) -> FCOS:
    """Our ``FCOS`` with the weights of a torchvision ``fcos_resnet50_fpn`` checkpoint.

    Args:
        path: a ``state_dict`` of torchvision's ``fcos_resnet50_fpn``, e.g. its published
            COCO weights ``fcos_resnet50_fpn_coco-99b0c9b7.pth``
            (``FCOS_ResNet50_FPN_Weights.COCO_V1``), or a checkpoint of torchvision's
            detection references (the ``state_dict`` under ``"model"``). The number of
            classes is read from it (91 for COCO: label = COCO category id).
        backend, candidates, centerness_weight: as for ``from_torchvision``.
        settings: torchvision ``FCOS`` settings (``min_size``, ``max_size``,
            ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``topk_candidates``, ``center_sampling_radius``); torchvision's defaults
            otherwise.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        WeightsError: the file cannot be read or is not such a checkpoint.
    """
    state = load_state_dict_file(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    logits = state.get("head.classification_head.cls_logits.weight")
    if not isinstance(logits, Tensor):
        raise WeightsError(f"{path} is not a torchvision fcos_resnet50_fpn state_dict (it has "
                           f"no head.classification_head.cls_logits.weight)")
    tv_model = torchvision_fcos_resnet50_fpn(logits.shape[0], **settings)
    try:
        tv_model.load_state_dict(state)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise WeightsError(f"{path} is not a torchvision fcos_resnet50_fpn state_dict: "
                           f"{reason}") from None
    return from_torchvision(tv_model.eval(), backend=backend, candidates=candidates,
                            centerness_weight=centerness_weight)


def coco_category_labels(label_to_category_id: Sequence[int], class_names: Sequence[str]
                         ) -> dict[int, int]:
    """``{COCO category id: dataset label}`` for a dataset whose categories are COCO's.

    Raises:
        WeightsError: a category is not COCO's (another id, or another name for the id).
    """
    mapping = {}
    for label, (category, name) in enumerate(zip(label_to_category_id, class_names)):
        known = COCO_CATEGORIES[category] if 0 < category < len(COCO_CATEGORIES) else None
        if known != name:
            raise WeightsError(
                f"the dataset's category {category} ({name!r}) is not COCO's"
                + (f" ({known!r})" if known else "")
                + ": torchvision's COCO weights are evaluated on a set with COCO's category "
                  "ids and names")
        mapping[category] = label
    return mapping


class CategoryRelabel(nn.Module):
    """A detector whose detections get other labels: ``label_map[label]``; detections
    with a label the map lacks are dropped (e.g. torchvision's COCO category ids to the
    contiguous labels of a dataset of some of COCO's categories).

    Everything but the labels is the wrapped detector's: a dropped detection frees no
    place for another, so the kept ones are exactly those the detector gave.
    """

    def __init__(self, detector: nn.Module, label_map: dict[int, int]) -> None:
        super().__init__()
        self.detector = detector
        lookup = torch.full((max(label_map, default=0) + 1,), -1, dtype=torch.int64)
        for label, new_label in label_map.items():
            lookup[label] = new_label
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        relabeled = []
        for detections in self.detector(images):
            labels = detections["labels"]
            known = labels < len(self.lookup)
            new_labels = torch.where(known, self.lookup[labels.clamp(max=len(self.lookup) - 1)],
                                     -1)
            keep = new_labels >= 0
            relabeled.append({**{key: value[keep] for key, value in detections.items()},
                              "labels": new_labels[keep]})
        return relabeled
