"""What the entry points ``train``, ``evaluate`` and ``infer`` share: the device, logging,
the config of a checkpoint, and user errors reported as one line.

A user mistake (a missing dataset or file, a bad config value, an unreadable checkpoint,
backbone weights that are not there and cannot be downloaded) ends a command with
``error: <what is wrong and what to do>`` on stderr and exit status 2, never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fcos_fast.config import (Config, ConfigError, apply_overrides, from_dict, load_config,
                              parse_overrides)
from fcos_fast.data import DatasetError
from fcos_fast.engine.checkpoint import CheckpointError, load_checkpoint
from fcos_fast.engine.distributed import get_rank, is_distributed, is_main_process
from fcos_fast.model.backbone import WeightsError

logger = logging.getLogger("fcos_fast")

#: Exceptions that mean the user asked for something that cannot be done; the entry
#: points print them as one line.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DatasetError, CheckpointError,
                                            WeightsError, FileNotFoundError)

#: Exit status of a command stopped by a user error (argparse uses 2 as well).
USAGE_ERROR = 2


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
