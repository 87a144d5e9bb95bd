"""A user's own data end to end, as the user runs it: train (a few iterations), evaluate,
infer and export on small sets laid out as Roboflow, CVAT and Label Studio export COCO
and as VOC-format XML with two own classes, without renaming a file; the dataset's own
category ids and names in every output."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fcos_fast import evaluate, infer, train
from fcos_fast.export.__main__ import main as export_main
from fcos_fast.engine.checkpoint import load_checkpoint
from tests.data.own_data import (CATEGORIES, UNUSED_CATEGORY, write_cvat, write_label_studio,
                                 write_roboflow, write_voc)
from tests.engine.tiny import tiny_model_overrides


def _strict_json(path: Path):
    """The file's JSON, refusing NaN and infinities (not JSON)."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _layout(name: str, root: Path) -> SimpleNamespace:
    """The set ``name`` written under ``root``, the ``data`` section a user would write
    for it, and its classes ``[(category id, name)]``."""
    if name == "roboflow":
        write_roboflow(root)
        data = {"dataset": "coco",
                "train_images": root / "train", "train_annotations": root / "train" /
                "_annotations.coco.json", "val_images": root / "valid",
                "val_annotations": root / "valid" / "_annotations.coco.json"}
        return SimpleNamespace(data=data, classes=list(CATEGORIES), val_images=root / "valid")
    if name == "cvat":  # two tasks, exported one by one
        write_cvat(root / "task_train")
        write_cvat(root / "task_val", num_images=4, start=100)
        data = {"dataset": "coco", **{
            f"{split}_{key}": root / f"task_{split}" / path
            for split in ("train", "val")
            for key, path in (("images", "images"),
                              ("annotations", "annotations/instances_default.json"))}}
        return SimpleNamespace(data=data, classes=[*CATEGORIES, UNUSED_CATEGORY],
                               val_images=root / "task_val" / "images")
    if name == "label_studio":  # one export; its images/ folder named as such
        write_label_studio(root / "train_export")
        write_label_studio(root / "val_export", num_images=4, start=100)
        data = {"dataset": "coco", **{
            f"{split}_{key}": root / f"{split}_export" / path
            for split in ("train", "val")
            for key, path in (("images", "images"), ("annotations", "result.json"))}}
        return SimpleNamespace(data=data, classes=[(0, "cat"), (1, "dog")],
                               val_images=root / "val_export" / "images")
    write_voc(root / "VOC_mine")
    data = {"dataset": "voc", "classes": ["disc", "ring"],
            "train_images": root / "VOC_mine",
            "train_annotations": root / "VOC_mine" / "ImageSets" / "Main" / "train.txt",
            "val_images": root / "VOC_mine",
            "val_annotations": root / "VOC_mine" / "ImageSets" / "Main" / "val.txt"}
    return SimpleNamespace(data=data, classes=[(1, "disc"), (2, "ring")],
                           val_images=root / "VOC_mine" / "JPEGImages")


@pytest.fixture(scope="module", params=["roboflow", "cvat", "label_studio", "voc"])
def trained(request, tmp_path_factory):
    """A tiny run on the layout, from a config file naming the data by paths (relative
    ones: the run's folder is the working folder), started from a shipped recipe."""
    root = tmp_path_factory.mktemp(request.param)
    layout = _layout(request.param, root)
    recipe = "voc_r18.yaml" if layout.data["dataset"] == "voc" else "coco_r18.yaml"
    data = {key: os.path.relpath(value, root) if isinstance(value, Path) else value
            for key, value in layout.data.items()}
    config = yaml.safe_load((Path(train.__file__).parent / "configs" / recipe).read_text())
    config["data"].update(data)
    (root / "mine.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        # The recipe's 4 loader workers (at most as many as there are cores) read the data.
        assert train.main(["--config", "mine.yaml", "--out", "run", "--no-progress",
                           "--set", *tiny_model_overrides()]) == 0
    finally:
        os.chdir(cwd)
    layout.root, layout.out = root, root / "run"
    return layout


def test_training_keeps_the_datasets_categories(trained):
    state = load_checkpoint(trained.out / "checkpoint.pt")
    assert state["label_to_category_id"] == [i for i, _ in trained.classes]
    assert state["class_names"] == [n for _, n in trained.classes]
    saved = yaml.safe_load((trained.out / "config.yaml").read_text())["data"]
    assert all(Path(saved[key]).is_absolute() and Path(saved[key]).exists()
               for key in ("train_images", "train_annotations", "val_images", "val_annotations"))
    metrics = _strict_json(trained.out / "metrics.json")
    assert metrics["categories"] == [{"id": i, "name": n} for i, n in trained.classes]
    assert set(metrics["per_class_AP"]) == {n for _, n in trained.classes}
    log = (trained.out / "log.txt").read_text()
    assert ", ".join(f"{n} ({i})" for i, n in trained.classes) in log
    assert "iter 6/6  cls_loss" in log  # losses every train.log_period


def test_evaluate_from_another_folder(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the saved config's paths are absolute
    assert evaluate.main(["--checkpoint", str(trained.out / "checkpoint.pt"), "--out", "eval",
                          "--no-progress"]) == 0
    metrics = _strict_json(tmp_path / "eval" / "metrics.json")
    trained_metrics = _strict_json(trained.out / "metrics.json")
    assert metrics["per_class_AP"] == trained_metrics["per_class_AP"]
    if UNUSED_CATEGORY in trained.classes:  # no ground truth: null, and a dash in the table
        assert metrics["per_class_AP"][UNUSED_CATEGORY[1]] is None
        assert "no ground truth of that class" in capsys.readouterr().out


def test_infer_writes_coco_results_with_the_datasets_ids(trained, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in trained.val_images.rglob("*")}
    out = tmp_path / "pictures"
    assert infer.main([str(trained.val_images), "--recursive", "--checkpoint",
                       str(trained.out / "checkpoint.pt"), "--out", str(out),
                       "--score-thresh", "0"]) == 0
    results = _strict_json(out / "detections.json")
    assert results, "the tiny model finds something above score 0"
    ids = {i for i, _ in trained.classes}
    for result in results:
        assert set(result) == {"image_id", "file_name", "category_id", "bbox", "score"}
        assert result["category_id"] in ids and len(result["bbox"]) == 4
        assert min(result["bbox"][2:]) >= 0 and Path(result["file_name"]).is_file()
    images = [p for p in trained.val_images.rglob("*") if p.suffix in (".jpg", ".png")]
    assert len({r["image_id"] for r in results}) == len(images)  # 1, 2, ... in this run
    assert (out / "grid.png").is_file() and len(list(out.glob("*.png"))) == len(images) + 1
    assert {p: p.stat().st_mtime_ns for p in trained.val_images.rglob("*")} == before


def test_infer_on_the_validation_split_names_its_image_ids(trained, tmp_path):
    assert infer.main(["--checkpoint", str(trained.out / "checkpoint.pt"), "--out",
                       str(tmp_path), "--score-thresh", "0", "--format", "per-image"]) == 0
    records = _strict_json(tmp_path / "detections.json")
    annotations = trained.data["val_annotations"]
    if annotations.suffix == ".json":  # the file's own image ids and file names
        listed = {image["id"]: image["file_name"]
                  for image in json.loads(annotations.read_text())["images"]}
        assert all(listed[r["image_id"]] == r["file_name"] for r in records)
    names = {n for _, n in trained.classes}
    assert all(d["class_name"] in names for r in records for d in r["detections"])


def test_export(trained, tmp_path, capsys):
    assert export_main(["--checkpoint", str(trained.out / "checkpoint.pt"), "--out",
                        str(tmp_path / "model.pt2"), "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "loaded in a fresh process, the same detections" in printed
    assert "mAP on " in printed and "exported program" in printed
