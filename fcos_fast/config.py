"""Experiment configuration as plain data: nested dataclasses, loaded from YAML.

A config file names only what it changes from the defaults below; an unknown key is an
error (a typo must not silently fall back to a default). Values can also be overridden on
the command line as ``section.key=value`` (the value is parsed as YAML), e.g.
``python -m fcos_fast.train --set solver.max_iters=200 model.backend=reference``.

The op backend of ``fcos_fast.ops`` is one field, ``model.backend``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

#: The config ``python -m fcos_fast.train`` runs when given none.
DEFAULT_CONFIG = "synthetic.yaml"


#: The values of ``solver.optimizer``.
OPTIMIZERS = ("sgd", "adamw")

#: The values of ``solver.amp`` (``fcos_fast.engine.precision`` resolves them).
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")

#: Solver fields that give the same length in iterations or in epochs; at most one of
#: each pair is set.
ITERATION_EPOCH_PAIRS = (("max_iters", "max_epochs"), ("steps", "steps_epochs"),
                         ("warmup_iters", "warmup_epochs"))


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class SyntheticConfig:
    """The built-in synthetic shapes dataset (see ``fcos_fast.data.synthetic``)."""

    num_train: int = 2000
    num_val: int = 300
    image_size: int = 192
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle"])
    min_objects: int = 1
    max_objects: int = 6
    #: Object size (longer side of its box) as a fraction of the image side.
    min_scale: float = 0.1
    max_scale: float = 0.5
    seed: int = 0


@dataclass
class DataConfig:
    """Which dataset, where it is, and how its images are loaded.

    ``root`` is the dataset folder: for ``coco`` the folder holding ``annotations/``,
    ``train2017/`` and ``val2017/``; for ``voc`` the ``VOCdevkit`` folder (or its
    parent); for ``synthetic`` the cache folder it is generated into (default
    ``$FCOS_FAST_CACHE`` or ``~/.cache/fcos_fast``, then ``synthetic/<hash>``).
    """

    dataset: str = "synthetic"  # synthetic | coco | voc
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    #: Open every image header when the dataset is built, so that a corrupt file is
    #: reported before training starts rather than when it is first read.
    verify_images: bool = False
    #: Train on VOC objects marked ``difficult`` (they are never scored in evaluation).
    use_difficult: bool = False
    #: Leave training images without any (non-crowd) object out.
    filter_empty: bool = False
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class InputConfig:
    """Resizing and augmentation.

    Training images are resized by the data pipeline: the shorter side to one of
    ``min_size_train`` (drawn per image), the longer side at most ``max_size_train``, then
    flipped horizontally with probability ``hflip_prob``. For evaluation the model
    resizes (shorter side ``min_size_test``, longer at most ``max_size_test``) and maps
    its detections back to the original image.
    """

    min_size_train: list[int] = field(default_factory=lambda: [800])
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    hflip_prob: float = 0.5


@dataclass
class ModelConfig:
    """``fcos_fast.model.FCOS`` settings (the number of classes comes from the data)."""

    backbone: str = "resnet50"
    #: A torchvision ResNet ``state_dict`` file (e.g. ImageNet weights); None: random init.
    backbone_weights: str | None = None
    trainable_backbone_layers: int | None = None
    fpn_channels: int = 256
    num_convs: int = 4
    center_sampling_radius: float = 1.5
    centerness_weight: float = 2.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100
    candidates: str = "per_class"  # per_class | per_level
    #: ``fcos_fast.ops`` backend: None (automatic), "reference", "native" or "triton".
    backend: str | None = None
    #: Convert BatchNorm to SyncBatchNorm when training on several processes.
    sync_bn: bool = False


@dataclass
class SolverConfig:
    """Optimisation: SGD with momentum (or AdamW), linear warm-up, then a cosine or step
    schedule.

    ``batch_size`` is the total over all processes. The schedule's length, LR steps and
    warm-up are each given in iterations or in epochs (passes over the training images):
    exactly one of ``max_iters`` and ``max_epochs``, at most one of ``steps`` and
    ``steps_epochs``, at most one of ``warmup_iters`` and ``warmup_epochs``.
    ``in_iterations`` converts epochs with the training set's size (an epoch is
    ``num_images / batch_size`` iterations). On the command line, setting one of a pair
    replaces the other from the file (``--set solver.max_iters=100`` shortens a config
    written in epochs).

    ``max_minutes`` bounds the wall time of the whole ``train`` command (data preparation
    and the final evaluation included): the schedule is shortened, never lengthened, so
    that training and the evaluation after it fit (see
    ``fcos_fast.engine.hooks.TimeBudget``).
    """

    batch_size: int = 16
    #: ``sgd`` (with momentum) or ``adamw`` (``momentum`` is then its beta1).
    optimizer: str = "sgd"
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iters: int | None = None
    max_epochs: float | None = None
    lr_schedule: str = "step"  # step | cosine
    #: LR milestones of the step schedule (each multiplies the LR by ``gamma``).
    steps: list[int] = field(default_factory=list)
    steps_epochs: list[float] = field(default_factory=list)
    gamma: float = 0.1
    #: Linear warm-up from ``warmup_factor * base_lr`` (0: none).
    warmup_iters: int = 0
    warmup_epochs: float = 0.0
    warmup_factor: float = 1.0 / 3
    #: Gradient clipping: maximum total L2 norm; None turns it off.
    clip_grad_norm: float | None = None
    #: Training precision: ``auto`` (bfloat16 autocast where the CPU or GPU executes it
    #: natively, float16 with a gradient scaler on older GPUs, else float32), or ``bf16``,
    #: ``fp16``, ``fp32`` to force one (see ``fcos_fast.engine.precision``). The booleans
    #: of older configs still load: ``true`` is ``auto``, ``false`` is ``fp32``.
    amp: str | bool = "auto"
    #: Train the backbone in channels-last memory format; None: on for CPU training
    #: (measured faster with oneDNN, see ``fcos_fast.engine.precision.use_channels_last``),
    #: off elsewhere.
    channels_last: bool | None = None
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):
            self.amp = "auto" if self.amp else "fp32"
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"solver.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if self.amp not in PRECISION_CHOICES:
            raise ConfigError(f"solver.amp must be one of {', '.join(PRECISION_CHOICES)}, "
                              f"got {self.amp!r}")
        if self.batch_size < 1:
            raise ConfigError(f"solver.batch_size must be positive, got {self.batch_size}")
        for iterations, epochs in ITERATION_EPOCH_PAIRS:
            if getattr(self, iterations) and getattr(self, epochs):
                raise ConfigError(f"solver.{iterations} and solver.{epochs} are both set; "
                                  f"give the schedule in one of them")
        for name in ("max_iters", "max_epochs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"solver.{name} must be positive, got {value}")
        for name in ("warmup_iters", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"solver.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("steps", "steps_epochs"):
            steps = getattr(self, name)
            if any(step <= 0 for step in steps) or steps != sorted(steps):
                raise ConfigError(f"solver.{name} must be positive and increasing, got {steps}")

    def in_iterations(self, num_images: int) -> SolverConfig:
        """This schedule with every length in iterations, for a training set of
        ``num_images`` images (epoch fields cleared).

        ``max_iters`` rounds up, so that the last epoch is complete; steps and warm-up
        round to the nearest iteration.
        """
        if self.max_iters is None and self.max_epochs is None:
            raise ConfigError("the schedule has no length: set solver.max_iters or "
                              "solver.max_epochs")
        if num_images < 1:
            raise ConfigError("cannot count epochs of an empty training set")
        per_epoch = num_images / self.batch_size
        max_iters = self.max_iters
        if max_iters is None:
            # The tolerance keeps a whole number of iterations (4 epochs of 16 images at
            # batch 16) from rounding up to one more through float error.
            max_iters = max(1, math.ceil(self.max_epochs * per_epoch - 1e-6))
        steps = self.steps or [round(epoch * per_epoch) for epoch in self.steps_epochs]
        warmup_iters = self.warmup_iters or round(self.warmup_epochs * per_epoch)
        return dataclasses.replace(self, max_iters=max_iters, max_epochs=None, steps=steps,
                                   steps_epochs=[], warmup_iters=warmup_iters,
                                   warmup_epochs=0.0)


@dataclass
class TrainConfig:
    """Everything around the optimisation: device, seeds, periods."""

    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_period: int = 20
    checkpoint_period: int = 1000
    #: Evaluate every this many iterations (0: only at the end).
    eval_period: int = 0
    eval_batch_size: int = 8
    #: torch intra-op threads (0: torch's default).
    num_threads: int = 0


@dataclass
class Config:
    """A whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def from_dict(data: dict[str, Any] | None, cls: type = Config, where: str = "config") -> Any:
    """Build dataclass ``cls`` from nested plain data, checking keys and value types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    values = {name: _convert(value, hints[name], f"{where}.{name}")
              for name, value in data.items()}
    return cls(**values)


def _convert(value: Any, hint: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [arg for arg in args if arg is not type(None)]
        for member in members[:-1]:  # the first member the value fits
            try:
                return _convert(value, member, where)
            except ConfigError:
                pass
        return _convert(value, members[-1], where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is expected
        return [_convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint)
                                                and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``update`` (new dicts; inputs untouched)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as plain data) with ``overrides`` merged in.

    An override that sets one field of an iteration/epoch pair (``ITERATION_EPOCH_PAIRS``)
    drops the other from ``data``: ``solver.max_iters=100`` on a config written in epochs
    means 100 iterations, not a conflict.
    """
    solver, base_solver = overrides.get("solver"), data.get("solver")
    if isinstance(solver, dict) and isinstance(base_solver, dict):
        base_solver = dict(base_solver)
        for pair in ITERATION_EPOCH_PAIRS:
            for given, other in (pair, pair[::-1]):
                if solver.get(given) and other not in solver:
                    base_solver.pop(other, None)
        data = {**data, "solver": base_solver}
    return merge(data, overrides)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["solver.base_lr=0.02", ...]`` -> ``{"solver": {"base_lr": 0.02}}``."""
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)
    return result


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file: a path, or the name of one shipped in ``fcos_fast/configs``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = resources.files("fcos_fast") / "configs" / path.name
    if packaged.is_file():
        return Path(str(packaged))
    shipped = sorted(p.name for p in (resources.files("fcos_fast") / "configs").iterdir()
                     if p.name.endswith(".yaml"))
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor one of the "
                            f"shipped configs {shipped}")


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML config (default: the shipped synthetic one) and apply overrides."""
    path = config_path(DEFAULT_CONFIG if path is None else path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(data, Config, where=str(path))
