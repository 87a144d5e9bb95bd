"""Model, optimizer and schedule from a config."""

from __future__ import annotations

import os

import torch
from torch import nn

from fcos_fast.config import Config, from_dict
from fcos_fast.data import Categories
from fcos_fast.engine.checkpoint import load_checkpoint, load_weights
from fcos_fast.engine.schedule import WarmupSchedule
from fcos_fast.model import FCOS, resnet_fpn_backbone
from fcos_fast.model.torchvision_compat import load_torchvision_checkpoint

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_model(config: Config, num_classes: int, *, load_backbone_weights: bool = True
                ) -> FCOS:
    """``FCOS`` as ``config.model`` describes, for ``num_classes`` classes.

    ``load_backbone_weights=False`` builds the same network (frozen BatchNorm and stages
    as for pretrained weights) without reading ``model.backbone_weights``: for a
    checkpoint to fill, on a machine that need not have the ImageNet file.

    Training images arrive resized and flipped by the data pipeline
    (``fcos_fast.data.build_train_transform``), so the model's own resize is switched off
    in training (torchvision's ``_skip_resize``); at evaluation it resizes to
    ``input.min_size_test``/``max_size_test`` and maps detections back to the original
    image.
    """
    m = config.model
    backbone = resnet_fpn_backbone(m.backbone,
                                   weights=m.backbone_weights if load_backbone_weights else None,
                                   pretrained=m.backbone_weights is not None,
                                   trainable_layers=m.trainable_backbone_layers,
                                   out_channels=m.fpn_channels)
    return FCOS(num_classes, backbone, min_size=config.input.min_size_test,
                max_size=config.input.max_size_test, num_convs=m.num_convs,
                center_sampling_radius=m.center_sampling_radius,
                centerness_weight=m.centerness_weight, score_thresh=m.score_thresh,
                nms_thresh=m.nms_thresh, topk_candidates=m.topk_candidates,
                detections_per_img=m.detections_per_img, candidates=m.candidates,
                backend=m.backend, _skip_resize=True)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``solver.optimizer``: SGD with momentum, or AdamW (``solver.momentum`` as beta1);
    no weight decay on normalisation layers (detectron2's default)."""
    solver = config.solver
    decay, no_decay = [], []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad:
                (no_decay if isinstance(module, _NORMS) else decay).append(parameter)
    groups = [group for group in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0})
              if group["params"]]
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr, betas=(solver.momentum, 0.999),
                                 weight_decay=solver.weight_decay)
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum,
                           weight_decay=solver.weight_decay)


def build_schedule(config: Config, num_train_images: int | None = None) -> WarmupSchedule:
    """The LR schedule of ``config.solver``; lengths given in epochs or fractions are
    converted to iterations (epochs for a training set of ``num_train_images``; see
    ``SolverConfig.in_iterations``)."""
    solver = config.solver.in_iterations(num_train_images)
    return WarmupSchedule(solver.max_iters, solver.lr_schedule, steps=solver.steps,
                          gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                          warmup_factor=solver.warmup_factor)


def checkpoint_categories(state: dict) -> Categories:
    """The classes a training checkpoint detects (category ids 1..C for checkpoints that
    predate storing them)."""
    names = list(state["class_names"])
    return Categories(tuple(names), tuple(state.get("label_to_category_id",
                                                    range(1, len(names) + 1))))


def model_differences(stored: dict, config: Config) -> str:
    """``" (the config's model differs from the checkpoint's in model.backbone: resnet50
    vs resnet18)"``, or ``""``: what may explain weights that do not fit."""
    stored_model = stored.get("model", {})
    changed = [f"model.{key}: {value!r} vs {stored_model[key]!r}"
               for key, value in config.to_dict()["model"].items()
               if key in stored_model and stored_model[key] != value]
    return (f" (the config's model differs from the checkpoint's in {'; '.join(changed)})"
            if changed else "")


def restore_trained_model(state: dict, source: str | os.PathLike, config: Config | None = None,
                          *, device: torch.device | str = "cpu") -> tuple[FCOS, Config]:
    """The model of the training checkpoint ``state`` (read from ``source``), in eval mode,
    and its config (``config`` if given: its ``model`` section must describe the same
    network, or ``CheckpointError`` names the first parameter that does not fit)."""
    if config is None:
        config = from_dict(state["config"])
    model = build_model(config, len(state["class_names"]), load_backbone_weights=False)
    load_weights(model, state["model"], source, model_differences(state["config"], config))
    return model.to(device).eval(), config


def load_trained_model(checkpoint: str | os.PathLike, config: Config | None = None, *,
                       device: torch.device | str = "cpu") -> tuple[FCOS, Config, list[str]]:
    """The model of a training checkpoint, in eval mode, with its config and class names.

    ``config`` replaces the config stored in the checkpoint (its ``model`` section must
    describe the same network).
    """
    state = load_checkpoint(checkpoint)
    model, config = restore_trained_model(state, checkpoint, config, device=device)
    return model, config, list(state["class_names"])


def build_torchvision_model(config: Config, path: str | os.PathLike, *,
                            device: torch.device | str = "cpu") -> FCOS:
    """Our FCOS with the weights of a torchvision ``fcos_resnet50_fpn`` checkpoint file,
    in eval mode, resizing and post-processing as ``config`` says (``input.*_test``,
    ``model.score_thresh``, ``nms_thresh``, ``topk_candidates``, ``detections_per_img``,
    ``candidates``, ``backend``). Its labels are the checkpoint's (COCO category ids for
    torchvision's COCO weights)."""
    m = config.model
    model = load_torchvision_checkpoint(
        path, backend=m.backend, candidates=m.candidates, centerness_weight=m.centerness_weight,
        min_size=config.input.min_size_test, max_size=config.input.max_size_test,
        score_thresh=m.score_thresh, nms_thresh=m.nms_thresh,
        topk_candidates=m.topk_candidates, detections_per_img=m.detections_per_img,
        center_sampling_radius=m.center_sampling_radius)
    return model.to(device).eval()
