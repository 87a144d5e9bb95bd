"""A user's mistakes end in exactly one ``error:`` line and exit status 2, never a
traceback — tested as the user meets them, in a subprocess of the entry point: a value
the config can refuse (refused when it is loaded, before any folder or data), an op
backend the device cannot run, a checkpoint of another network or of other classes, an
unreadable image read by a loader worker, pictures asked into an input folder."""

import json

import pytest
import yaml

from fcos_fast import train
from fcos_fast.data import VOC_CLASSES
from tests.data.own_data import write_cvat, write_roboflow, write_voc
from tests.engine.tiny import tiny_model_overrides, tiny_overrides
from tests.test_cli import assert_one_error_line, run_entry_point


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run on 2 synthetic classes (circle, square)."""
    root = tmp_path_factory.mktemp("two_classes")
    out = root / "run"
    assert train.main(["--out", str(out), "--no-progress", "--set",
                       *tiny_overrides(root, **{"solver.max_iters": 3,
                                                "data.synthetic.shapes": "[circle, square]"})]) == 0
    return out


@pytest.mark.parametrize("override, message", [
    ("data.dataset=cocoo", "data.dataset must be one of synthetic, coco, voc, got 'cocoo'"),
    ("model.backbone=resnet181", "model.backbone must be one of resnet18, resnet34, resnet50, "
                                 "resnet101, resnet152, got 'resnet181'"),
    ("model.candidates=perclass", "model.candidates must be one of per_class, per_level, got "
                                  "'perclass'"),
    ("solver.lr_schedule=cos", "solver.lr_schedule must be one of step, cosine, got 'cos'"),
    ("model.backend=cuda", "model.backend must be one of reference, native, triton (or null), "
                           "got 'cuda'"),
])
def test_a_bad_value_is_refused_when_the_config_is_loaded(tmp_path, override, message):
    result = run_entry_point("train", "--out", "run", "--set", override, cwd=tmp_path)
    assert_one_error_line(result, message)
    assert not (tmp_path / "run").exists()  # before anything was made


def test_a_backend_the_device_cannot_run(tmp_path):
    result = run_entry_point("train", "--out", "run", "--set", "model.backend=triton",
                             "train.device=cpu", cwd=tmp_path, env={"TRITON_INTERPRET": None})
    assert_one_error_line(result, "model.backend triton cannot run on cpu", "interpreter",
                          "use one of reference")
    result = run_entry_point("train", "--out", "run", cwd=tmp_path,
                             env={"FCOS_FAST_BACKEND": "cuda"})
    assert_one_error_line(result, "FCOS_FAST_BACKEND must be one of reference, native, triton")
    assert not (tmp_path / "run").exists()  # before anything was made


@pytest.mark.parametrize("change, parameter", [
    ("model.backbone=resnet34", "model.backbone: 'resnet34' vs 'resnet18'"),
    ("model.fpn_channels=128", "model.fpn_channels: 128 vs 64"),
])
def test_a_checkpoint_of_another_network(run, tmp_path, change, parameter):
    result = run_entry_point("evaluate", "--checkpoint", run / "checkpoint.pt", "--set", change,
                             cwd=tmp_path)
    line = assert_one_error_line(result, "holds a network of another architecture than the "
                                         "config describes", parameter)
    assert " is [" in line or "not in the checkpoint" in line  # the first parameter, named


def test_resuming_with_the_config_of_another_network(run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "config.yaml"):
        (out / name).write_bytes((run / name).read_bytes())
    other = yaml.safe_load((run / "config.yaml").read_text())
    other["model"]["num_convs"] = 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    result = run_entry_point("train", "--config", "other.yaml", "--out", "run", "--resume",
                             "--no-progress", cwd=tmp_path)
    assert_one_error_line(result, "another architecture", "model.num_convs: 2 vs 1")


def test_evaluating_a_checkpoint_on_other_classes(run, tmp_path):
    """2 classes trained, 3 in the data: stopped before inference, saying which differ."""
    result = run_entry_point("evaluate", "--checkpoint", run / "checkpoint.pt", "--set",
                             "data.synthetic.shapes=[circle, square, triangle]", cwd=tmp_path)
    assert_one_error_line(result, f"the classes of checkpoint {run / 'checkpoint.pt'} are not "
                                  f"those of", "only", "triangle (3)")
    assert "evaluate" not in result.stderr.split("error:")[0]  # no inference ran


def test_a_20_class_checkpoint_on_2_class_data(tmp_path):
    """A checkpoint of the 20 VOC classes (data.classes left to its default), evaluated on
    the same files read as 2 own classes."""
    root = write_voc(tmp_path / "voc", classes=("dog", "cat"))
    splits = root / "ImageSets" / "Main"
    out = tmp_path / "run"
    assert train.main(["--config", "voc_r18.yaml", "--out", str(out), "--no-progress", "--set",
                       f"data.train_images={root}", f"data.train_annotations={splits / 'train.txt'}",
                       f"data.val_images={root}", f"data.val_annotations={splits / 'val.txt'}",
                       "data.num_workers=0", *tiny_model_overrides()]) == 0
    assert json.loads((out / "metrics.json").read_text())["categories"][0] == \
        {"id": 1, "name": VOC_CLASSES[0]}
    result = run_entry_point("evaluate", "--checkpoint", out / "checkpoint.pt", "--set",
                             "data.classes=[dog, cat]", cwd=tmp_path)
    assert_one_error_line(result, "only checkpoint", "aeroplane (1)", "and 12 more",
                          "dog (1), cat (2)")


def test_an_unreadable_image_read_by_a_loader_worker(tmp_path):
    root = write_roboflow(tmp_path / "data")
    broken = sorted((root / "train").glob("*.jpg"))[3]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    result = run_entry_point(
        "train", "--config", "coco_r18.yaml", "--out", "run", "--no-progress", "--set",
        f"data.train_images={root / 'train'}",
        f"data.train_annotations={root / 'train' / '_annotations.coco.json'}",
        f"data.val_images={root / 'valid'}",
        f"data.val_annotations={root / 'valid' / '_annotations.coco.json'}",
        "data.num_workers=2", *tiny_model_overrides(), cwd=tmp_path)
    assert_one_error_line(result, f"cannot read image {broken}", "data.verify_images: true")


def test_pictures_into_an_input_folder(run, tmp_path):
    images = tmp_path / "pngs"
    images.mkdir()
    source = next(run.parent.glob("synthetic/*/val/*.png"))
    (images / "photo.png").write_bytes(source.read_bytes())
    before = (images / "photo.png").read_bytes()
    for out in ("pngs", "pngs/results"):
        result = run_entry_point("infer", "--checkpoint", run / "checkpoint.pt", "--out", out,
                                 "pngs", cwd=tmp_path)
        assert_one_error_line(result, f"--out {out} ", "the input folder pngs",
                              "choose a folder outside it")
    # A file given as input is not overwritten by its picture either.
    result = run_entry_point("infer", "--checkpoint", run / "checkpoint.pt", "--out", "pngs",
                             "pngs/photo.png", cwd=tmp_path)
    assert_one_error_line(result, "would overwrite the input pngs/photo.png")
    assert sorted(p.name for p in images.iterdir()) == ["photo.png"]
    assert (images / "photo.png").read_bytes() == before


def test_evaluate_on_a_dataset_with_a_class_more(tmp_path):
    """The issue's case: a COCO checkpoint of cat (7) and dog (42), evaluated on a
    CVAT export whose task has a third label, bird (50)."""
    root = write_roboflow(tmp_path / "roboflow")
    cvat = write_cvat(tmp_path / "cvat")
    out = tmp_path / "run"
    assert train.main(["--config", "coco_r18.yaml", "--out", str(out), "--no-progress", "--set",
                       f"data.train_images={root / 'train'}",
                       f"data.train_annotations={root / 'train' / '_annotations.coco.json'}",
                       f"data.val_images={root / 'valid'}",
                       f"data.val_annotations={root / 'valid' / '_annotations.coco.json'}",
                       "data.num_workers=0", *tiny_model_overrides()]) == 0
    result = run_entry_point("evaluate", "--checkpoint", out / "checkpoint.pt", "--set",
                             f"data.val_images={cvat / 'images'}",
                             f"data.val_annotations={cvat / 'annotations/instances_default.json'}",
                             cwd=tmp_path)
    assert_one_error_line(result, "instances_default.json has bird (50)")
    assert not (out / "eval-val").exists()
    assert json.loads((out / "metrics.json").read_text())["categories"] == [
        {"id": 7, "name": "cat"}, {"id": 42, "name": "dog"}]
