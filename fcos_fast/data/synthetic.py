"""The built-in synthetic dataset: shapes on noisy backgrounds, in COCO format.

Every image is a pure function of ``(seed, split, index)``: a smooth random background
(a colour gradient plus low-frequency blotches and a few stray lines), one to six shapes
whose size is a tenth to a half of the image side and whose colour is drawn independently
of the class (only the outline tells the class), then pixel noise over everything. Shapes
may overlap; a new shape is never placed so as to hide more than half of an earlier one.

The set is generated on first use into a cache folder, ``<cache>/synthetic/<key>`` with
``key`` a hash of the settings, as ``train/*.png``, ``val/*.png`` and
``annotations/instances_{train,val}.json``; the COCO loader and pycocotools evaluation
then serve it like any COCO dataset. Every file is written to a temporary name and
renamed, and an annotation file is written only after all its images, so an interrupted
generation is resumed, never half-read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fcos_fast.config import SyntheticConfig
from fcos_fast.data.coco import CocoDetection

#: Bump when the drawing changes, so that old caches are not reused.
GENERATOR_VERSION = 2

SHAPES = ("circle", "square", "triangle", "diamond", "cross")

_SPLIT_SEEDS = {"train": 1, "val": 2}

# A shape may cover at most this fraction of an earlier shape's box.
_MAX_COVER = 0.5
# Minimum distance (0-255 RGB, Euclidean) between a shape's colour and the background
# under it, so every shape is visible.
_MIN_CONTRAST = 100.0


def cache_dir() -> Path:
    """``$FCOS_FAST_CACHE``, else ``$XDG_CACHE_HOME/fcos_fast``, else ``~/.cache/fcos_fast``."""
    if "FCOS_FAST_CACHE" in os.environ:
        return Path(os.environ["FCOS_FAST_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fcos_fast"


def dataset_dir(config: SyntheticConfig, root: str | os.PathLike | None = None) -> Path:
    """Where the set of these settings lives (nothing is created)."""
    settings = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(config)},
                          sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    base = Path(root) if root is not None else cache_dir() / "synthetic"
    return base / f"shapes{len(config.shapes)}-{config.image_size}px-{key}"


def _check(config: SyntheticConfig) -> None:
    unknown = [s for s in config.shapes if s not in SHAPES]
    if unknown or len(set(config.shapes)) != len(config.shapes) or not config.shapes:
        raise ValueError(f"synthetic shapes must be distinct names from {SHAPES}, "
                         f"got {config.shapes}")
    if not 1 <= config.min_objects <= config.max_objects:
        raise ValueError("synthetic objects need 1 <= min_objects <= max_objects")
    if not 0 < config.min_scale <= config.max_scale <= 1:
        raise ValueError("synthetic scales need 0 < min_scale <= max_scale <= 1")
    if config.image_size < 32:
        raise ValueError("synthetic image_size must be at least 32")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[size, size, 3]`` float in 0-255: gradient + blotches + lines (no pixel noise yet)."""
    ramp = np.linspace(-1.0, 1.0, size)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]) * 0.5 + 0.5
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = start + (end - start) * t[..., None]
    # Low-frequency blotches: a coarse random grid, upsampled smoothly.
    cells = int(rng.integers(3, 7))
    coarse = rng.normal(0, 20, (cells, cells, 3)).astype(np.float32)
    blotches = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size),
                                                                          Image.BICUBIC))
                         for c in range(3)], axis=-1)
    image = image + blotches
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):
        points = [tuple(p) for p in rng.uniform(0, size, (2, 2)).tolist()]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=1)
    return canvas


def _outline(shape: str, x: float, y: float, s: float) -> tuple[str, list[float]]:
    """PIL primitive and coordinates of ``shape`` filling the box ``(x, y, x+s, y+s)``."""
    right, bottom = x + s - 1, y + s - 1  # PIL's coordinates are inclusive pixel indices
    mid_x, mid_y = x + (s - 1) / 2, y + (s - 1) / 2
    if shape == "circle":
        return "ellipse", [x, y, right, bottom]
    if shape == "square":
        return "rectangle", [x, y, right, bottom]
    if shape == "triangle":
        return "polygon", [x, bottom, right, bottom, mid_x, y]
    if shape == "diamond":
        return "polygon", [mid_x, y, right, mid_y, mid_x, bottom, x, mid_y]
    if shape == "cross":
        a, b = x + s / 3, x + 2 * s / 3 - 1
        c, d = y + s / 3, y + 2 * s / 3 - 1
        return "polygon", [a, y, b, y, b, c, right, c, right, d, b, d, b, bottom, a, bottom,
                           a, d, x, d, x, c, a, c]
    raise ValueError(shape)


def _cover(box: list[float], other: list[float]) -> float:
    """Fraction of ``other``'s area that ``box`` covers."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    return max(w, 0) * max(h, 0) / ((other[2] - other[0]) * (other[3] - other[1]))


def render(config: SyntheticConfig, split: str, index: int
           ) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """Image ``index`` of ``split``: ``([H, W, 3] uint8, [(box xyxy, label), ...])``."""
    rng = np.random.default_rng([config.seed, _SPLIT_SEEDS[split], index])
    size = config.image_size
    canvas = _background(rng, size)
    reference = np.asarray(canvas, dtype=np.float32)
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        for _attempt in range(50):
            side = float(np.round(rng.uniform(config.min_scale, config.max_scale) * size))
            x, y = (float(v) for v in np.floor(rng.uniform(0, size - side + 1, 2)))
            box = [x, y, x + side, y + side]
            if all(_cover(box, earlier) <= _MAX_COVER for earlier, _ in objects):
                break
        else:
            continue  # no room left for a visible shape
        label = int(rng.integers(len(config.shapes)))
        under = reference[int(y):int(y + side), int(x):int(x + side)].reshape(-1, 3).mean(0)
        for _attempt in range(20):
            colour = rng.integers(0, 256, 3)
            if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
                break
        primitive, coords = _outline(config.shapes[label], x, y, side)
        getattr(draw, primitive)(coords, fill=tuple(int(c) for c in colour))
        objects.append((box, label))
    noise = rng.normal(0, rng.uniform(4, 16), (size, size, 3))
    image = np.clip(np.asarray(canvas, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return image, objects


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _make_image(config: SyntheticConfig, split: str, index: int, path: Path
                ) -> list[tuple[list[float], int]]:
    image, objects = render(config, split, index)
    if not path.exists():  # left by an interrupted run: same bytes, keep it
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        _write_atomic(path, buffer.getvalue())
    return objects


def _generate_split(config: SyntheticConfig, root: Path, split: str, count: int,
                    workers: int) -> None:
    annotation_file = root / "annotations" / f"instances_{split}.json"
    if annotation_file.exists():
        return
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{index:06d}.png" for index in range(count)]
    args = ([config] * count, [split] * count, range(count), [image_dir / n for n in names])
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per_image = list(pool.map(_make_image, *args, chunksize=32))
    else:
        per_image = list(map(_make_image, *args))

    images, annotations = [], []
    for index, (name, objects) in enumerate(zip(names, per_image)):
        images.append({"id": index + 1, "file_name": name, "width": config.image_size,
                       "height": config.image_size})
        for (x1, y1, x2, y2), label in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": label + 1, "name": name, "supercategory": "shape"}
                  for label, name in enumerate(config.shapes)]
    coco = {"info": {"description": "fcos_fast synthetic shapes", "version": GENERATOR_VERSION,
                     "settings": dataclasses.asdict(config)},
            "images": images, "annotations": annotations, "categories": categories}
    _write_atomic(annotation_file, json.dumps(coco).encode())


def ensure_synthetic(config: SyntheticConfig, root: str | os.PathLike | None = None, *,
                     workers: int | None = None) -> Path:
    """Generate the set of these settings unless it is already there; returns its folder.

    Args:
        config: the set's settings.
        root: parent folder of the set (default: ``cache_dir() / "synthetic"``).
        workers: processes drawing images (default: the CPU count, at most 4).
    """
    _check(config)
    folder = dataset_dir(config, root)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    for split, count in (("train", config.num_train), ("val", config.num_val)):
        _generate_split(config, folder, split, count, workers)
    return folder


def synthetic_dataset(config: SyntheticConfig, split: str,
                      root: str | os.PathLike | None = None, **kwargs) -> CocoDetection:
    """The ``split`` (``"train"`` or ``"val"``) of the synthetic set, generated if needed."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"the synthetic set has splits {sorted(_SPLIT_SEEDS)}, got {split!r}")
    folder = ensure_synthetic(config, root)
    return CocoDetection(folder / split, folder / "annotations" / f"instances_{split}.json",
                         name="synthetic", **kwargs)
