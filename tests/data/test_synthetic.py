"""The synthetic shapes set: deterministic, in COCO format, within its stated ranges."""

import json

import numpy as np
import pytest

from fcos_fast.config import SyntheticConfig
from fcos_fast.data import CocoDetection, ensure_synthetic, synthetic_dataset
from fcos_fast.data.synthetic import dataset_dir, render

SMALL = SyntheticConfig(num_train=6, num_val=3, image_size=64,
                        shapes=["circle", "square", "triangle", "cross"])


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_complete(tmp_path):
    first = ensure_synthetic(SMALL, tmp_path / "a", workers=1)
    second = ensure_synthetic(SMALL, tmp_path / "b", workers=2)  # same bytes in parallel
    assert first.name == second.name
    files = _files(first)
    assert files == _files(second)
    assert sorted(files) == ["annotations/instances_train.json", "annotations/instances_val.json",
                             *(f"train/{i:06d}.png" for i in range(6)),
                             *(f"val/{i:06d}.png" for i in range(3))]  # no temporary files


def test_settings_change_the_set_and_its_folder(tmp_path):
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 1})
    assert dataset_dir(other, tmp_path) != dataset_dir(SMALL, tmp_path)
    assert not np.array_equal(render(other, "train", 0)[0], render(SMALL, "train", 0)[0])
    assert not np.array_equal(render(SMALL, "val", 0)[0], render(SMALL, "train", 0)[0])


def test_interrupted_generation_is_completed(tmp_path):
    folder = ensure_synthetic(SMALL, tmp_path, workers=1)
    expected = _files(folder)
    (folder / "annotations" / "instances_train.json").unlink()  # as if killed before it
    (folder / "train" / "000003.png").unlink()
    ensure_synthetic(SMALL, tmp_path, workers=1)
    assert _files(folder) == expected


def test_objects_are_within_the_stated_ranges():
    config = SyntheticConfig(image_size=96, shapes=["circle", "square", "triangle"])
    counts, labels, colours = [], [], {0: [], 1: [], 2: []}
    for index in range(60):
        image, objects = render(config, "train", index)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        counts.append(len(objects))
        for (x1, y1, x2, y2), label in objects:
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            assert 0.1 * 96 - 1 <= x2 - x1 <= 0.5 * 96 + 1
            labels.append(label)
            centre = image[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(float)
            colours[label].append(centre)
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 3
    assert set(labels) == {0, 1, 2}
    # Colour says nothing of the class: every class spans the colour range.
    for samples in colours.values():
        assert np.ptp(np.array(samples), axis=0).min() > 100


def test_served_by_the_coco_loader(tmp_path):
    dataset = synthetic_dataset(SMALL, "val", tmp_path)
    assert isinstance(dataset, CocoDetection)
    assert dataset.class_names == SMALL.shapes and len(dataset) == 3
    image, target = dataset[0]
    assert image.shape == (3, 64, 64)
    info = json.loads((dataset.annotation_file).read_text())["info"]
    assert info["settings"]["image_size"] == 64
    assert len(target["boxes"]) == len(render(SMALL, "val", 0)[1])


def test_bad_settings():
    with pytest.raises(ValueError, match="shapes"):
        ensure_synthetic(SyntheticConfig(shapes=["circle", "hexagon"]))
    with pytest.raises(ValueError, match="splits"):
        synthetic_dataset(SMALL, "test")
