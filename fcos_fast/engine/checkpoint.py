"""Checkpoints: written atomically beside the previous one, loaded with ``weights_only=True``.

A checkpoint holds everything a resumed run needs to continue exactly: the model, the
optimizer, the LR scheduler, the gradient scaler, the iteration, the (possibly
shortened) schedule length, every process's RNG states, and the config and class names
(so that ``evaluate`` and ``infer`` need nothing else). It contains only tensors and
plain Python data, so it loads without unpickling arbitrary objects.

Writing ``checkpoint.pt`` first keeps the one it replaces as ``checkpoint.previous.pt``,
so a file that a bad disk (or a copy cut short) has damaged still leaves a good one:
``load_checkpoint`` raises ``CheckpointError`` with one line naming the file and what is
wrong with it, and ``load_checkpoint_or_previous`` falls back to the previous one.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcos_fast.engine.atomic import atomic_write

logger = logging.getLogger(__name__)


#: The keys every training checkpoint has.
REQUIRED_KEYS = ("model", "config", "class_names")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``checkpoint.previous.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path`` (synced to disk), keep the file
    it replaces as ``previous_path(path)``, then rename the new one over ``path``: a crash
    mid-write never leaves a truncated checkpoint, and ``path`` always exists once written.
    The file gets the mode of any file the user writes (0666 less the umask).
    """
    path = Path(path)
    with atomic_write(path, "wb") as file:
        torch.save(state, file)
        if path.exists():
            _keep_as_previous(path)
    _sync_folder(path.parent)


def _keep_as_previous(path: Path) -> None:
    """Make ``previous_path(path)`` the current ``path`` without ever removing ``path``: a
    hard link renamed into place (a copy where the filesystem has no links)."""
    handle, link = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.previous.")
    os.close(handle)
    os.unlink(link)
    try:
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
        os.replace(link, previous_path(path))
    except BaseException:
        Path(link).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Persist the renames (POSIX only; a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path``.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is not a readable fcos_fast checkpoint (truncated,
            corrupt, or something else); the message says which, in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a torn zip, a bad pickle, ... many ways
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({path.stat().st_size} bytes; "
                              f"truncated or corrupt: {detail})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an fcos_fast training checkpoint (it lacks "
                              f"{', '.join(REQUIRED_KEYS)}; found {found})")
    return state


def load_checkpoint_or_previous(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The checkpoint at ``path`` or, when that one is missing or unreadable, the previous
    one kept beside it (with a warning saying so). Returns ``(state, file it came from)``.

    Raises:
        FileNotFoundError: neither file exists.
        CheckpointError: no usable checkpoint (the message names both files).
    """
    path = Path(path)
    previous = previous_path(path)
    try:
        return load_checkpoint(path), path
    except (CheckpointError, FileNotFoundError) as error:
        if not previous.is_file():
            raise
        problem = error
    try:
        state = load_checkpoint(previous)
    except CheckpointError as error:
        raise CheckpointError(f"{problem}; the previous one is unusable too: {error}") from None
    logger.warning("%s; falling back to the previous checkpoint %s (iteration %s)",
                   problem, previous, state.get("iteration", "?"))
    return state, previous


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                 source: str | os.PathLike, hint: str = "") -> None:
    """``model.load_state_dict(weights)``, or a ``CheckpointError`` in one line naming the
    first parameter that does not fit (missing, unexpected, or of another shape) when
    ``weights`` (of ``source``) are of another architecture; ``hint`` is appended."""
    own = model.state_dict()
    problem = None
    for name, value in own.items():
        if name not in weights:
            problem = f"the model's {name} is not in the checkpoint"
        elif tuple(weights[name].shape) != tuple(value.shape):
            problem = (f"{name} is {list(weights[name].shape)} in the checkpoint but "
                       f"{list(value.shape)} in the model")
        if problem:
            break
    if problem is None:
        extra = next((name for name in weights if name not in own), None)
        if extra is not None:
            problem = f"the checkpoint's {extra} has no place in the model"
    if problem is not None:
        raise CheckpointError(f"{source} holds a network of another architecture than the "
                              f"config describes: {problem}{hint}")
    model.load_state_dict(weights)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, numpy, Python) as plain data."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
