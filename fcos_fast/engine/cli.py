"""What the entry points ``train``, ``evaluate`` and ``infer`` share: the device, logging,
the config of a checkpoint, the inference precision, and user errors reported as one line.

A user mistake (a missing dataset or file, a bad config value, an unreadable checkpoint,
backbone weights that are not there and cannot be downloaded, a folder that cannot be
written) ends a command with ``error: <what is wrong and what to do>`` on stderr and exit
status 2, never a traceback; anything else is a bug and keeps its traceback. What the
config can tell is checked before anything heavy runs: values when it is loaded, the op
backend against the device (``check_backend``) before data and model are built.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

from fcos_fast import ops
from fcos_fast.config import (Config, ConfigError, apply_overrides, from_dict, load_config,
                              parse_overrides)
from fcos_fast.data import Categories, DatasetError
from fcos_fast.engine.build import (build_torchvision_model, checkpoint_categories,
                                    restore_trained_model)
from fcos_fast.engine.checkpoint import CheckpointError, load_checkpoint
from fcos_fast.engine.distributed import get_rank, is_distributed, is_main_process
from fcos_fast.engine.precision import (Precision, describe, inference_precision,
                                        set_inference_memory_format)
from fcos_fast.model.backbone import WeightsError
from fcos_fast.model.torchvision_compat import COCO_CATEGORIES

logger = logging.getLogger("fcos_fast")

#: Exceptions that mean the user asked for something that cannot be done; the entry
#: points print them as one line. (Of ``OSError``, those a user fixes: a missing path, a
#: folder without write permission, a file where a folder belongs or the reverse.)
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DatasetError, CheckpointError,
                                            WeightsError, FileNotFoundError, PermissionError,
                                            FileExistsError, IsADirectoryError,
                                            NotADirectoryError)

#: Exit status of a command stopped by a user error (argparse uses 2 as well).
USAGE_ERROR = 2

#: The config of ``--torchvision-checkpoint`` when none is given: the network of
#: torchvision's ``fcos_resnet50_fpn`` and the COCO 2017 data.
TORCHVISION_CONFIG = "coco_r50_1x.yaml"


def report_user_errors(command: Callable[[], int]) -> int:
    """Run ``command``; a ``USER_ERRORS`` exception becomes one ``error: ...`` line on
    stderr and exit status 2."""
    try:
        return command()
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR


def one_line(error: BaseException) -> str:
    """The message of ``error`` on a single line (a wrapped library message may span
    several)."""
    return " ".join(str(error).split())


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when there is a GPU, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available; use "
                          f"--set train.device=cpu (or auto)")
    return device


def check_backend(config: Config, device: torch.device) -> None:
    """Raise ``ConfigError`` if the op backend ``model.backend`` (or, when that is null,
    ``$FCOS_FAST_BACKEND``) cannot run on ``device``."""
    backend, where = config.model.backend, "model.backend"
    if backend is None:
        backend, where = os.environ.get(ops.BACKEND_ENV_VAR) or None, ops.BACKEND_ENV_VAR
        if backend is None:
            return
        if backend not in ops.BACKEND_NAMES:
            raise ConfigError(f"{where} must be one of {', '.join(ops.BACKEND_NAMES)} (or "
                              f"unset), got {backend!r}")
    reasons = ops.unsupported_reasons(backend, device)
    if reasons:
        usable = ", ".join(ops.available_backends(device))
        raise ConfigError(f"{where} {backend} cannot run on {device.type}: "
                          f"{'; '.join(reasons)}; use one of {usable} (or null: automatic)")


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(out_dir: Path | None = None) -> None:
    """``fcos_fast`` log to stderr (rank 0: info, others: warnings) and ``out_dir/log.txt``."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    prefix = f"[rank {get_rank()}] " if is_distributed() else ""
    formatter = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                                  "%H:%M:%S")
    console = _TqdmHandler()
    console.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if out_dir is not None and is_main_process():
        file = logging.FileHandler(out_dir / "log.txt")
        file.setFormatter(formatter)
        logger.addHandler(file)


def checkpoint_config(checkpoint: str | Path, config_file: str | None,
                      overrides: list[str]) -> Config:
    """``config_file`` (or the config stored in ``checkpoint``) with ``overrides`` applied."""
    if config_file is not None:
        return load_config(config_file, overrides)
    stored = load_checkpoint(checkpoint)["config"]
    return from_dict(apply_overrides(stored, parse_overrides(overrides)))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` or ``--torchvision-checkpoint``, ``--config`` and ``--set``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint.pt of a training run")
    source.add_argument("--torchvision-checkpoint", metavar="FILE",
                        help="a torchvision fcos_resnet50_fpn state_dict, e.g. its COCO "
                             "weights fcos_resnet50_fpn_coco-99b0c9b7.pth (labels are COCO "
                             "category ids); the config gives the data, the test-time "
                             "resize and the post-processing")
    parser.add_argument("--config", default=None,
                        help=f"config (default: the checkpoint's; {TORCHVISION_CONFIG} with "
                             f"--torchvision-checkpoint)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.backend=reference")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16|fp16`` of the inference commands (checked by
    ``fcos_fast.engine.precision.inference_precision``, so that a bad value is one
    ``error:`` line like every other user mistake)."""
    parser.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16,fp16}",
                        help="precision of the network (post-processing is float32 always): "
                             "auto (default) is bfloat16 where the CPU or GPU executes it "
                             "natively, float16 on older GPUs, else float32; the others force "
                             "one (refused where the device has no native support)")


def inference_setup(model: nn.Module, precision: Precision, config: Config) -> str:
    """Put ``model``'s backbone in the memory format of ``precision`` (channels-last under
    bfloat16 on the CPU, unless ``solver.channels_last`` says otherwise; the commands own
    their model); returns the line that says how inference runs."""
    channels_last = set_inference_memory_format(model, precision, config.solver.channels_last)
    return f"precision: {describe(precision, channels_last)}"


def model_config(args: argparse.Namespace) -> Config:
    """The config of the model ``add_model_arguments`` named, ``--set`` applied."""
    if args.torchvision_checkpoint is not None:
        return load_config(args.config or TORCHVISION_CONFIG, args.set)
    return checkpoint_config(args.checkpoint, args.config, args.set)


def load_model(args: argparse.Namespace, config: Config, device: torch.device
               ) -> tuple[nn.Module, Config, list[str]]:
    """The model ``add_model_arguments`` named, in eval mode on ``device``, its config and
    class names (for torchvision's COCO weights: ``COCO_CATEGORIES``, by category id)."""
    model, config, categories = load_detector(args, config, device)
    return model, config, list(categories.names)


def load_detector(args: argparse.Namespace, config: Config, device: torch.device
                  ) -> tuple[nn.Module, Config, Categories]:
    """The model ``add_model_arguments`` named, in eval mode on ``device``, its config and
    the classes it detects, with their category ids (for torchvision's COCO weights the
    label is the COCO category id)."""
    check_backend(config, device)
    if args.torchvision_checkpoint is None:
        state = load_checkpoint(args.checkpoint)
        model, config = restore_trained_model(state, args.checkpoint, config, device=device)
        return model, config, checkpoint_categories(state)
    path = Path(args.torchvision_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--torchvision-checkpoint {path} does not exist (torchvision's "
                                f"COCO weights: {FCOS_ResNet50_FPN_Weights.COCO_V1.url})")
    model = build_torchvision_model(config, path, device=device)
    if model.num_classes != len(COCO_CATEGORIES):
        raise WeightsError(f"{path} has {model.num_classes} classes; torchvision's COCO "
                           f"detectors have {len(COCO_CATEGORIES)} (label = COCO category id)")
    return model, config, Categories(tuple(COCO_CATEGORIES), tuple(range(len(COCO_CATEGORIES))))
