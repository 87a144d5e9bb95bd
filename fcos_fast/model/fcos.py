"""The FCOS detector (Tian et al., 2019) on ``fcos_fast.ops``.

The model follows torchvision's detection calling convention. Its hot paths (target
assignment, GIoU loss, candidate selection, NMS) go through ``fcos_fast.ops`` with the
backend given at construction, so the model speeds up as kernels land without changing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from fcos_fast.model.backbone import FPN_STRIDES, resnet_fpn_backbone
from fcos_fast.model.head import FCOSHead, HeadOutputs
from fcos_fast.model.loss import assign_targets, fcos_losses
from fcos_fast.model.points import Points, make_points
from fcos_fast.model.postprocess import CANDIDATE_SCHEMES, postprocess_detections
from fcos_fast.ops import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FCOSInputError(InputError, AssertionError):
    """Images or targets ``FCOS`` cannot use; the message says which and why.

    A ``ValueError`` (and, like every fcos_fast input error, a ``RuntimeError``), and an
    ``AssertionError``: what torchvision's detection models raise for the same mistakes
    (``torch._assert``), so code and tests written against them catch ours unchanged.
    """


FCOSInputError.__module__ = "fcos_fast.model"


class FCOS(nn.Module):
    """FCOS: ResNet-FPN (P3-P7), shared GroupNorm heads, centerness on the regression branch.

    Calling convention (torchvision's):

    * ``model.train(); model(images, targets)`` returns
      ``{"cls_loss", "reg_loss", "ctr_loss"}`` (scalars; the training loss is their sum).
    * ``model.eval(); model(images)`` returns, per image, ``{"boxes": [D, 4] (x1, y1, x2,
      y2) in the input image's pixels, "scores": [D], "labels": [D] int64}`` sorted by
      decreasing score. With gradients enabled the boxes and scores carry the autograd
      graph (``out[0]["scores"].sum().backward()`` reaches the weights), as in
      torchvision; wrap inference in ``torch.no_grad()``/``torch.inference_mode()``.

    ``images`` is a list of ``[3, H_i, W_i]`` float tensors in ``[0, 1]``, of any sizes;
    ``targets`` a list of ``{"boxes": [G_i, 4] (x1, y1, x2, y2) float, "labels": [G_i]
    int64 in [0, num_classes)}``. ``G_i = 0`` (an image without objects) is valid.

    Args:
        num_classes: number of object classes (no background class).
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``,
            ``"resnet152"``, or a module that maps ``[B, 3, H, W]`` to one feature map per
            stride (a list or an ordered dict), all with ``backbone.out_channels`` channels.
        backbone_weights: a torchvision weights name (``"IMAGENET1K_V1"``, downloaded
            into the torch hub cache on first use) or a ResNet ``state_dict`` file (named
            backbones only).
        trainable_backbone_layers: ResNet stages trained, from ``layer4`` down (0-5);
            default 3 with ``backbone_weights``, else 5.
        strides: nominal stride of each pyramid level.
        min_size, max_size, image_mean, image_std, transform_kwargs: the resize and
            normalisation of torchvision's ``GeneralizedRCNNTransform`` (shorter side to
            ``min_size``, longer side at most ``max_size``; a tuple ``min_size`` picks one
            at random per training batch).
        num_convs: conv layers in each head tower.
        prior_probability: initial class probability; sets the classification bias.
        centerness_bias: initial centerness logit.
        center_sampling_radius: a point is positive only within this many strides of the
            box center.
        centerness_weight: weight of the centerness loss (torchvision's is 1).
        focal_alpha, focal_gamma: focal loss parameters.
        score_thresh: detection candidates need a score ``sqrt(cls * ctr)`` above it.
        nms_thresh: IoU threshold of the class-aware NMS.
        topk_candidates: candidates kept per class (``"per_class"``) or per pyramid level
            (``"per_level"``) before NMS.
        detections_per_img: detections kept per image after NMS.
        candidates: candidate scheme, ``"per_class"`` or ``"per_level"`` (torchvision's).
        backend: ``fcos_fast.ops`` backend for every op (``None``: automatic). May be
            changed on the instance at any time.
    """

    def __init__(self, num_classes: int, backbone: str | nn.Module = "resnet50", *,
                 backbone_weights: str | os.PathLike | None = None,
                 trainable_backbone_layers: int | None = None,
                 strides: Sequence[int] = FPN_STRIDES,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD,
                 num_convs: int = 4, prior_probability: float = 0.01,
                 centerness_bias: float = 0.0, center_sampling_radius: float = 1.5,
                 centerness_weight: float = 2.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, score_thresh: float = 0.2, nms_thresh: float = 0.6,
                 topk_candidates: int = 1000, detections_per_img: int = 100,
                 candidates: str = "per_class", backend: str | None = None,
                 **transform_kwargs) -> None:
        super().__init__()
        if candidates not in CANDIDATE_SCHEMES:
            raise ValueError(f"candidates must be one of {CANDIDATE_SCHEMES}, got {candidates!r}")
        if isinstance(backbone, str):
            backbone = resnet_fpn_backbone(backbone, weights=backbone_weights,
                                           trainable_layers=trainable_backbone_layers)
        elif backbone_weights is not None or trainable_backbone_layers is not None:
            raise ValueError("backbone_weights and trainable_backbone_layers apply only to a "
                             "backbone given by name")
        if not hasattr(backbone, "out_channels"):
            raise ValueError("a backbone module must have an `out_channels` attribute")

        self.num_classes = num_classes
        self.strides = tuple(int(stride) for stride in strides)
        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean),
                                                  list(image_std), **transform_kwargs)
        self.backbone = backbone
        self.head = FCOSHead(backbone.out_channels, num_classes, num_convs=num_convs,
                             prior_probability=prior_probability,
                             centerness_bias=centerness_bias)

        self.center_sampling_radius = center_sampling_radius
        self.centerness_weight = centerness_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.candidates = candidates
        self.backend = backend

    def __prepare_scriptable__(self) -> FCOS:
        """``torch.jit.script(model)`` calls this first: refuse in one clear line, rather
        than with TorchScript's error on the first Python construct it cannot compile."""
        raise RuntimeError(
            "fcos_fast's FCOS does not support TorchScript (torch.jit.script, deprecated in "
            "PyTorch): run it eagerly or with torch.compile, or export it as a fixed-size "
            "graph with fcos_fast.export.StaticFCOS (torch.export, ONNX)")

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in evaluation mode (see the class docstring)."""
        if self.training:
            if targets is None:
                raise FCOSInputError("targets are required in training mode")
            _check_targets(targets, len(images), self.num_classes)
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]

        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        features = list(features.values()) if isinstance(features, dict) else list(features)
        outputs = self.head(features)
        points = make_points([tuple(level.shape[-2:]) for level in features],
                             tuple(image_list.tensors.shape[-2:]), self.strides,
                             device=image_list.tensors.device)

        # Under autocast only the network runs in low precision: targets, losses and
        # post-processing (and the fused ops in them) are float32.
        with torch.autocast(image_list.tensors.device.type, enabled=False):
            if self.training:
                return self.compute_losses(outputs, points, targets)
            detections = self.detect(outputs, points, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def compute_losses(self, outputs: HeadOutputs, points: Points,
                       targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The named losses, for targets in the coordinates of ``points``."""
        assigned = assign_targets(points, targets,
                                  center_sampling_radius=self.center_sampling_radius,
                                  backend=self.backend)
        return fcos_losses(outputs, points, assigned, centerness_weight=self.centerness_weight,
                           focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma,
                           backend=self.backend)

    def detect(self, outputs: HeadOutputs, points: Points,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections in the coordinates of the resized images of sizes ``image_sizes``.

        Not under ``torch.no_grad``: with gradients enabled, scores and boxes keep the
        graph back to the head and backbone, as torchvision's do; run inference under
        ``torch.no_grad()`` or ``torch.inference_mode()`` to build none.
        """
        return postprocess_detections(
            outputs, points, image_sizes, score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, topk_candidates=self.topk_candidates,
            detections_per_img=self.detections_per_img, candidates=self.candidates,
            backend=self.backend)


def _check_targets(targets: list[dict[str, Tensor]], num_images: int, num_classes: int) -> None:
    """Raise ``FCOSInputError`` (a ``ValueError``) for targets the losses cannot use.

    Shapes are checked per image; box and label values are checked on all images at once
    (one device sync): boxes need positive width and height, labels must be class indices.
    """
    if len(targets) != num_images:
        raise FCOSInputError(f"got {num_images} images but {len(targets)} targets")
    for index, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise FCOSInputError(f"targets[{index}]['boxes'] must be a [N, 4] tensor, got {shape}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise FCOSInputError(f"targets[{index}]['labels'] must be a [{len(boxes)}] tensor "
                             f"(one label per box), got {shape}")
        if not boxes.is_floating_point() or labels.is_floating_point():
            raise FCOSInputError(f"targets[{index}] needs float boxes and integer labels, got "
                             f"{boxes.dtype} and {labels.dtype}")

    boxes = torch.cat([target["boxes"] for target in targets])
    labels = torch.cat([target["labels"] for target in targets])
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1) | ~boxes.isfinite().all(dim=1)
    bad_label = (labels < 0) | (labels >= num_classes)
    if bool((degenerate | bad_label).any()):
        first = int(torch.nonzero(degenerate | bad_label)[0])
        image = next(i for i, n in enumerate(_cumulative_counts(targets)) if first < n)
        if bool(degenerate[first]):
            raise FCOSInputError(f"targets[{image}] has a box without positive width and height "
                             f"or with non-finite coordinates: {boxes[first].tolist()}")
        raise FCOSInputError(f"targets[{image}] has label {int(labels[first])} outside "
                         f"[0, {num_classes})")


def _cumulative_counts(targets: list[dict[str, Tensor]]) -> list[int]:
    counts, total = [], 0
    for target in targets:
        total += len(target["boxes"])
        counts.append(total)
    return counts
