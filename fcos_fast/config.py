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

from fcos_fast.engine.schedule import SCHEDULES
from fcos_fast.model.backbone import RESNETS
from fcos_fast.model.postprocess import CANDIDATE_SCHEMES
from fcos_fast.ops import BACKEND_NAMES

#: The config ``python -m fcos_fast.train`` runs when given none.
DEFAULT_CONFIG = "synthetic.yaml"

#: The values of ``data.dataset``.
DATASETS = ("synthetic", "coco", "voc")

#: The values of ``solver.optimizer``.
OPTIMIZERS = ("sgd", "adamw")

#: The values of ``solver.amp`` (``fcos_fast.engine.precision`` resolves them).
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")

#: Solver fields that give the same length in iterations, in epochs or as fractions of
#: the run; at most one of each group is set.
SCHEDULE_UNITS = (("max_iters", "max_epochs"),
                  ("steps", "steps_epochs", "steps_fraction"),
                  ("warmup_iters", "warmup_epochs", "warmup_fraction"))

#: ``data`` fields naming a split's files, by split role.
SPLIT_PATHS = {"train": ("train_images", "train_annotations"),
               "val": ("val_images", "val_annotations")}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _require_choice(where: str, value: Any, choices: tuple, *, optional: bool = False) -> None:
    if (value is None and optional) or value in choices:
        return
    allowed = ", ".join(choices) + (" (or null)" if optional else "")
    raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


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

    A split is found in one of two ways:

    * by paths, ``train_images`` + ``train_annotations`` (and ``val_images`` +
      ``val_annotations``): for ``coco`` an image folder and a COCO-format JSON file
      whose ``file_name`` entries are relative to it (as Roboflow, CVAT and Label Studio
      export them); for ``voc`` either a ``VOC2007``-style folder (holding
      ``Annotations/`` and ``JPEGImages/``) and a split file listing image ids, or an
      image folder and a folder of XML files (every one of them is an image);
    * or by ``root`` and the split names: for ``coco`` the folder holding
      ``annotations/instances_<split>.json`` and ``<split>/``; for ``voc`` the
      ``VOCdevkit`` folder (or its parent) with ``ImageSets/Main/<split>.txt``; for
      ``synthetic`` the cache folder it is generated into (default ``$FCOS_FAST_CACHE``
      or ``~/.cache/fcos_fast``, then ``synthetic/<hash>``).

    ``classes`` names the classes: for ``voc`` the names its XML files use (default: the
    20 Pascal VOC classes); for ``coco`` an optional subset of the file's categories
    (objects of the others are left out). Without it a COCO file's categories are its
    classes, except an unused category 0 that other categories name as their
    supercategory (the placeholder of Roboflow's exports).
    """

    dataset: str = "synthetic"  # synthetic | coco | voc
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    classes: list[str] | None = None
    #: Open every image header when the dataset is built, so that a corrupt file is
    #: reported before training starts rather than when it is first read.
    verify_images: bool = False
    #: Train on VOC objects marked ``difficult`` (they are never scored in evaluation).
    use_difficult: bool = False
    #: Leave training images without any (non-crowd) object out.
    filter_empty: bool = False
    #: Loader worker processes (at most the CPU cores this process may use).
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _require_choice("data.dataset", self.dataset, DATASETS)
        _require(self.num_workers >= 0,
                 f"data.num_workers must be >= 0, got {self.num_workers}")
        given = [key for keys in SPLIT_PATHS.values() for key in keys
                 if getattr(self, key) is not None]
        if given and self.dataset == "synthetic":
            raise ConfigError(f"data.{given[0]} names files of your own dataset: set "
                              f"data.dataset to coco (a JSON file) or voc (XML files)")
        for images, annotations in SPLIT_PATHS.values():
            if (getattr(self, images) is None) != (getattr(self, annotations) is None):
                present, missing = ((images, annotations) if getattr(self, images) is not None
                                    else (annotations, images))
                raise ConfigError(f"data.{present} is set but data.{missing} is not: a "
                                  f"split given by paths needs both")
        if self.train_images is not None and self.val_images is None and self.root is None:
            raise ConfigError("data.train_images is set but the validation split is not: "
                              "set data.val_images and data.val_annotations (they may name "
                              "the training files, to check the pipeline)")
        if self.classes is not None:
            _require(self.dataset != "synthetic",
                     "data.classes is for coco and voc data; the synthetic set's classes "
                     "are data.synthetic.shapes")
            _require(len(self.classes) > 0, "data.classes is empty: name at least one class")
            repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
            _require(not repeated, f"data.classes names {repeated} more than once")

    def split_role(self, split: str) -> str | None:
        """``"train"`` or ``"val"``: which of ``SPLIT_PATHS`` give ``split``; None when it
        is not given by paths."""
        for role, (images, _) in SPLIT_PATHS.items():
            name = self.train_split if role == "train" else self.val_split
            if split == name and getattr(self, images) is not None:
                return role
        return None


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

    def __post_init__(self) -> None:
        _require(bool(self.min_size_train) and min(self.min_size_train) > 0,
                 f"input.min_size_train must be positive sizes, got {self.min_size_train}")
        for name in ("max_size_train", "min_size_test", "max_size_test"):
            _require(getattr(self, name) > 0,
                     f"input.{name} must be positive, got {getattr(self, name)}")
        _require(0 <= self.hflip_prob <= 1,
                 f"input.hflip_prob must be in [0, 1], got {self.hflip_prob}")


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

    def __post_init__(self) -> None:
        _require_choice("model.backbone", self.backbone, RESNETS)
        _require_choice("model.candidates", self.candidates, CANDIDATE_SCHEMES)
        _require_choice("model.backend", self.backend, BACKEND_NAMES, optional=True)
        layers = self.trainable_backbone_layers
        _require(layers is None or 0 <= layers <= 5,
                 f"model.trainable_backbone_layers must be in [0, 5] (or null), got {layers}")
        # The heads' GroupNorm has 32 groups.
        _require(self.fpn_channels > 0 and self.fpn_channels % 32 == 0,
                 f"model.fpn_channels must be a positive multiple of 32, got {self.fpn_channels}")
        _require(self.num_convs >= 0, f"model.num_convs must be >= 0, got {self.num_convs}")
        _require(0 <= self.score_thresh < 1,
                 f"model.score_thresh must be in [0, 1), got {self.score_thresh}")
        _require(0 < self.nms_thresh <= 1,
                 f"model.nms_thresh must be in (0, 1], got {self.nms_thresh}")
        for name in ("topk_candidates", "detections_per_img"):
            _require(getattr(self, name) >= 1,
                     f"model.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class SolverConfig:
    """Optimisation: SGD with momentum (or AdamW), linear warm-up, then a cosine or step
    schedule.

    ``batch_size`` is the total over all processes. The schedule's length is given in
    iterations or in epochs (passes over the training images): exactly one of
    ``max_iters`` and ``max_epochs``. The LR steps and the warm-up are given in
    iterations, in epochs or as fractions of the run (``steps_fraction: [0.7, 0.9]``
    decays at 70% and 90% of it, however long it is): at most one of ``steps``,
    ``steps_epochs``, ``steps_fraction``, and one of ``warmup_iters``, ``warmup_epochs``,
    ``warmup_fraction``. ``in_iterations`` converts them all to iterations (an epoch is
    ``num_images / batch_size`` iterations) and refuses a schedule that cannot work: a
    warm-up as long as the run, a step within the warm-up or at or past the end. On the
    command line, setting one field of a group replaces the others from the file
    (``--set solver.max_iters=100`` shortens a config written in epochs).

    ``max_minutes`` bounds the wall time of the whole ``train`` command (data preparation
    and the final evaluation included): the schedule is shortened, never lengthened, so
    that training and the evaluations fit (see ``fcos_fast.engine.hooks.TimeBudget``).
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
    steps_fraction: list[float] = field(default_factory=list)
    gamma: float = 0.1
    #: Linear warm-up from ``warmup_factor * base_lr`` (0: none).
    warmup_iters: int = 0
    warmup_epochs: float = 0.0
    warmup_fraction: float = 0.0
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
        _require_choice("solver.optimizer", self.optimizer, OPTIMIZERS)
        _require_choice("solver.amp", self.amp, PRECISION_CHOICES)
        _require_choice("solver.lr_schedule", self.lr_schedule, SCHEDULES)
        _require(self.batch_size >= 1,
                 f"solver.batch_size must be positive, got {self.batch_size}")
        _require(self.base_lr > 0, f"solver.base_lr must be positive, got {self.base_lr}")
        for group in SCHEDULE_UNITS:
            given = [name for name in group if getattr(self, name)]
            _require(len(given) <= 1, f"solver.{' and solver.'.join(given)} are both set; "
                                      f"give the schedule in one of them")
        for name in ("max_iters", "max_epochs"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"solver.{name} must be positive, got {value}")
        for name in ("warmup_iters", "warmup_epochs"):
            _require(getattr(self, name) >= 0,
                     f"solver.{name} must be >= 0, got {getattr(self, name)}")
        _require(0 <= self.warmup_fraction < 1,
                 f"solver.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for name in ("steps", "steps_epochs", "steps_fraction"):
            steps = getattr(self, name)
            _require(all(step > 0 for step in steps) and steps == sorted(steps),
                     f"solver.{name} must be positive and increasing, got {steps}")
        _require(all(step < 1 for step in self.steps_fraction),
                 f"solver.steps_fraction must be fractions of the run (below 1), got "
                 f"{self.steps_fraction}")

    def needs_dataset_size(self) -> bool:
        """Whether a length is given in epochs (``in_iterations`` then needs the number
        of training images)."""
        return bool(self.max_epochs or self.steps_epochs or self.warmup_epochs)

    def in_iterations(self, num_images: int | None = None) -> SolverConfig:
        """This schedule with every length in iterations, for a training set of
        ``num_images`` images (needed only for lengths in epochs); the epoch and fraction
        fields cleared.

        ``max_iters`` rounds up, so that the last epoch is complete; steps and warm-up
        round to the nearest iteration.

        Raises:
            ConfigError: the schedule has no length, or cannot work (its message says
                which fields and how they came to iterations).
        """
        if self.max_iters is None and self.max_epochs is None:
            raise ConfigError("the schedule has no length: set solver.max_iters or "
                              "solver.max_epochs")
        if self.needs_dataset_size() and num_images is None:
            raise ValueError("a schedule given in epochs needs the number of training images")
        if self.needs_dataset_size() and num_images < 1:
            raise ConfigError("cannot count epochs of an empty training set")
        per_epoch = (num_images or 0) / self.batch_size
        max_iters = self.max_iters
        if max_iters is None:
            # The tolerance keeps a whole number of iterations (4 epochs of 16 images at
            # batch 16) from rounding up to one more through float error.
            max_iters = max(1, math.ceil(self.max_epochs * per_epoch - 1e-6))
        steps = (self.steps or [round(epoch * per_epoch) for epoch in self.steps_epochs]
                 or [round(fraction * max_iters) for fraction in self.steps_fraction])
        warmup_iters = (self.warmup_iters or round(self.warmup_epochs * per_epoch)
                        or round(self.warmup_fraction * max_iters))
        converted = dataclasses.replace(self, max_iters=max_iters, max_epochs=None, steps=steps,
                                        steps_epochs=[], steps_fraction=[],
                                        warmup_iters=warmup_iters, warmup_epochs=0.0,
                                        warmup_fraction=0.0)
        converted._check_schedule(self)
        return converted

    def _check_schedule(self, given: SolverConfig) -> None:
        """Refuse a schedule (in iterations, converted from ``given``) that cannot work."""
        def field_of(group: tuple[str, ...]) -> str:
            name = next((name for name in group if getattr(given, name)), group[0])
            return f"solver.{name} {getattr(given, name)}"

        run = f"the run of {self.max_iters} iterations"
        if self.warmup_iters >= self.max_iters:
            raise ConfigError(
                f"the warm-up ({field_of(SCHEDULE_UNITS[2])}: {self.warmup_iters} iterations) "
                f"is at least as long as {run}: the LR would never reach solver.base_lr; "
                f"shorten it (solver.warmup_fraction scales with the run)")
        if self.lr_schedule != "step" or not self.steps:
            return
        steps = field_of(SCHEDULE_UNITS[1])
        if self.steps[0] <= self.warmup_iters:
            raise ConfigError(
                f"LR steps at iterations {self.steps} ({steps}) fall at or before the end "
                f"of the warm-up (iteration {self.warmup_iters}): the LR would drop before "
                f"reaching solver.base_lr; put the steps after the warm-up "
                f"(solver.steps_fraction scales with the run)")
        if self.steps[-1] >= self.max_iters:
            raise ConfigError(
                f"LR steps at iterations {self.steps} ({steps}) lie at or past the end of "
                f"{run}: they would never apply; put them inside the run "
                f"(solver.steps_fraction scales with the run)")


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

    def __post_init__(self) -> None:
        _require(self.log_period >= 1, f"train.log_period must be at least 1, got "
                                       f"{self.log_period}")
        _require(self.eval_batch_size >= 1, f"train.eval_batch_size must be at least 1, got "
                                            f"{self.eval_batch_size}")
        for name in ("checkpoint_period", "eval_period", "num_threads"):
            _require(getattr(self, name) >= 0,
                     f"train.{name} must be >= 0, got {getattr(self, name)}")


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

    An override that sets one field of a group of the same length in other units
    (``SCHEDULE_UNITS``) drops the others from ``data``: ``solver.max_iters=100`` on a
    config written in epochs means 100 iterations, not a conflict, and
    ``solver.warmup_iters=0`` turns off a warm-up given as a fraction. Setting a field to
    null clears only that field.
    """
    solver, base_solver = overrides.get("solver"), data.get("solver")
    if isinstance(solver, dict) and isinstance(base_solver, dict):
        base_solver = dict(base_solver)
        for group in SCHEDULE_UNITS:
            for given in group:
                if solver.get(given) is not None:
                    for other in group:
                        if other != given and other not in solver:
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
