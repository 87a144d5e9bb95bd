"""Files written whole or not at all: a temporary file beside the target, synced, given
the mode an ordinary ``open`` would give it (0666 less the umask; ``mkstemp`` makes 0600),
then renamed over the target. A reader never sees a half-written file, and a crash leaves
the previous version (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process's umask (read from ``/proc`` where possible: setting it to read it is
    not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open(path, "w")`` would have created it with."""
    os.chmod(path, 0o666 & ~umask())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, into a temporary file that replaces ``path`` when
    the block ends without an error (and is removed when it does not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        give_default_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write(text)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON ``null``): strict
    JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """``value`` as strict JSON (NaN and infinities as null), written atomically."""
    write_text(path, json.dumps(strict_json(value), indent=indent, allow_nan=False) + "\n")


def save_image(image, path: str | os.PathLike) -> None:
    """A PIL image saved atomically, in the format of the file name's suffix."""
    from PIL import Image

    path = Path(path)
    kind = Image.registered_extensions().get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"no image format for the file name {path.name}")
    with atomic_write(path, "wb") as file:
        image.save(file, format=kind)
