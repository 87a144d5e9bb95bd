"""``python -m fcos_fast.evaluate`` and ``python -m fcos_fast.infer`` on a tiny trained run."""

import json

import pytest
import torch
from PIL import Image

from fcos_fast import evaluate, infer, train
from fcos_fast.engine.build import load_trained_model
from fcos_fast.visualize import draw_detections, plot_curves
from tests.engine.tiny import tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    out = root / "run"
    assert train.main(["--out", str(out), "--no-progress",
                       "--set", *tiny_overrides(root, **{"solver.max_iters": 3})]) == 0
    return out


def test_evaluate_reproduces_the_training_metrics(run, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path),
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50 " in printed and "circle" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    for key in ("mAP", "mAP50", "mAP75", "per_class_AP"):
        assert metrics[key] == trained[key]
    assert metrics["split"] == "val"


def test_evaluate_other_split_with_overrides(run, capsys):
    assert evaluate.main(["--checkpoint", str(run / "checkpoint.pt"), "--split", "train",
                          "--set", "model.backend=reference", "model.topk_candidates=50",
                          "--no-progress"]) == 0
    metrics = json.loads((run / "eval-train" / "metrics.json").read_text())
    assert metrics["num_images"] == 16 and 0 <= metrics["mAP50"] <= 1


def test_infer_on_files_and_folders(run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((next((run.parent / "synthetic").iterdir()) / "val").glob("*.png"))
    for index, path in enumerate(source[:2]):
        Image.open(path).save(images / f"picture{index}.jpg")
    out = tmp_path / "out"
    # The per-image records (the default is the COCO results format, tested in
    # tests/test_own_data.py); their detections name the category id, not a 0-based label.
    assert infer.main([str(images), str(source[2]), "--checkpoint", str(run / "checkpoint.pt"),
                       "--out", str(out), "--score-thresh", "0.0", "--format", "per-image"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert [r["picture"] for r in records] == ["picture0.png", "picture1.png", "000002.png"]
    for record in records:
        assert Image.open(out / record["picture"]).size == (384, 384)  # enlarged 64 -> 384
        assert record["width"] == record["height"] == 64
        for detection in record["detections"]:
            assert set(detection) == {"box", "score", "category_id", "class_name"}
            assert detection["score"] > 0.0


def test_infer_on_a_split(run, tmp_path):
    assert infer.main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path),
                       "--num-images", "3", "--scale", "1", "--format", "per-image"]) == 0
    records = json.loads((tmp_path / "detections.json").read_text())
    assert len(records) == 3 and Image.open(tmp_path / records[0]["picture"]).size == (64, 64)


def test_infer_skips_an_unreadable_file_and_lists_it(run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    good = next(run.parent.glob("synthetic/*/val/*.png"))
    (images / "a.png").write_bytes(good.read_bytes())
    (images / "b.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    (images / "c.png").write_bytes(good.read_bytes())
    out = tmp_path / "out"
    assert infer.main([str(images), "--checkpoint", str(run / "checkpoint.pt"), "--out",
                       str(out), "--format", "per-image"]) == 0
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0].startswith(f"warning: skipped {images / 'b.jpg'}: cannot read image")
    assert error[-1] == f"warning: 1 unreadable file(s) skipped: {images / 'b.jpg'}"
    records = json.loads((out / "detections.json").read_text())
    assert [r["picture"] for r in records] == ["a.png", "c.png"]
    assert [r["image_id"] for r in records] == [1, 3]  # positions among the inputs


def test_infer_searches_subfolders_when_asked(run, tmp_path, capsys):
    (tmp_path / "images" / "day").mkdir(parents=True)
    good = next(run.parent.glob("synthetic/*/val/*.png"))
    (tmp_path / "images" / "day" / "grid.png").write_bytes(good.read_bytes())
    arguments = [str(tmp_path / "images"), "--checkpoint", str(run / "checkpoint.pt"),
                 "--out", str(tmp_path / "out")]
    assert infer.main(arguments) == 2
    assert "--recursive searches subfolders too" in capsys.readouterr().err
    assert infer.main([*arguments, "--recursive", "--format", "per-image"]) == 0
    (record,) = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert record["picture"] == "0000_grid.png"  # not the run's own grid.png
    assert record["file_name"] == str(tmp_path / "images" / "day" / "grid.png")


def test_infer_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        infer.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 0.3)", "(default: coco)", "(default: 8)"):
        assert default in text


def test_infer_missing_input(run, tmp_path, capsys):
    assert infer.main([str(tmp_path / "nope.jpg"), "--checkpoint", str(run / "checkpoint.pt"),
                       "--out", str(tmp_path)]) == 2
    assert "nope.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "infer"])
def test_torn_checkpoint_is_a_one_line_error(run, tmp_path, capsys, command):
    torn = tmp_path / "checkpoint.pt"
    data = (run / "checkpoint.pt").read_bytes()
    torn.write_bytes(data[: len(data) // 3])
    main = evaluate.main if command == "evaluate" else infer.main
    assert main(["--checkpoint", str(torn), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(torn) in error[0] and "truncated or corrupt" in error[0]


def test_checkpoint_gives_the_trained_model(run):
    model, config, names = load_trained_model(run / "checkpoint.pt")
    assert not model.training and names == ["circle", "square", "triangle"]
    assert config.model.fpn_channels == 64
    with torch.no_grad():
        (output,) = model([torch.rand(3, 50, 70)])
    assert output["boxes"].shape[1] == 4


def test_pictures(run, tmp_path):
    picture = draw_detections(torch.rand(3, 40, 60), torch.tensor([[5., 5, 30, 20]]),
                              torch.tensor([1]), torch.tensor([0.9]), ["a", "b"], scale=2)
    assert picture.size == (120, 80)
    assert plot_curves(run / "metrics.jsonl", tmp_path / "curves.png").is_file()
