"""``python -m fcos_fast.evaluate`` and ``python -m fcos_fast.infer`` on a tiny trained run;
their ``--precision`` (and ``export``'s)."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fcos_fast import evaluate, infer, train
from fcos_fast.data import build_dataset
from fcos_fast.engine.build import load_trained_model
from fcos_fast.engine.cli import checkpoint_config, inference_setup
from fcos_fast.engine.evaluation import evaluate as evaluate_model
from fcos_fast.engine.evaluation import inference
from fcos_fast.engine.precision import Precision, inference_precision, resolve_precision
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


def _in_process(run, overrides: list[str]):
    """The tiny run's model as the commands prepare it (``--set overrides``, auto's
    precision), its config and precision."""
    config = checkpoint_config(run / "checkpoint.pt", None, overrides)
    model, config, _ = load_trained_model(run / "checkpoint.pt", config)
    precision = inference_precision("auto", "cpu")
    inference_setup(model, precision, config)
    return model, config, precision


# An override of the post-processing, for the commands to pass on.
EVERY_CANDIDATE = "model.score_thresh=0.0"


def test_evaluate_other_split_with_overrides(run, monkeypatch):
    """--split and --set reach the evaluation: it scores the train split with the model the
    overrides describe, and writes what scoring that model in-process gives."""
    overrides = ["model.backend=reference", "model.topk_candidates=50", EVERY_CANDIDATE]
    seen = []

    def spy(model, dataset, **kwargs):
        seen.append((model.backend, model.topk_candidates, model.score_thresh,
                     list(dataset.image_ids)))
        return evaluate_model(model, dataset, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate", spy)
    assert evaluate.main(["--checkpoint", str(run / "checkpoint.pt"), "--split", "train",
                          "--set", *overrides, "--no-progress"]) == 0
    model, config, precision = _in_process(run, overrides)
    train_split = build_dataset(config, "train")
    assert list(train_split.image_ids) != list(build_dataset(config, "val").image_ids)
    assert seen == [("reference", 50, 0.0, list(train_split.image_ids))]
    metrics = json.loads((run / "eval-train" / "metrics.json").read_text())
    assert metrics["num_images"] == 16 and metrics["split"] == "train"
    expected, _ = evaluate_model(model, train_split, precision=precision)
    for key in ("mAP", "mAP50", "mAP75", "per_class_AP", "precision"):
        assert metrics[key] == expected[key], key


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
                       "--out", str(out), "--score-thresh", "0.08", "--format", "per-image"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert [r["picture"] for r in records] == ["picture0.png", "picture1.png", "000002.png"]
    # Each record holds the model's detections of that image scoring above --score-thresh
    # (the tiny run's scores lie between 0.075 and 0.11, about half above 0.08).
    model, _, precision = _in_process(run, [])
    paths = [images / "picture0.jpg", images / "picture1.jpg", source[2]]
    ids = json.loads((run / "metrics.json").read_text())["categories"]
    for record, (_, _, found) in zip(records, infer.detect(model, paths, precision=precision)):
        assert Image.open(out / record["picture"]).size == (384, 384)  # enlarged 64 -> 384
        assert record["width"] == record["height"] == 64
        keep = found["scores"] > 0.08
        assert 0 < int(keep.sum()) < len(keep)  # the threshold has work to do
        assert [d["score"] for d in record["detections"]] == [
            round(score, 5) for score in found["scores"][keep].tolist()]
        assert [d["box"] for d in record["detections"]] == [
            [round(v, 2) for v in box] for box in found["boxes"][keep].tolist()]
        assert [(d["category_id"], d["class_name"]) for d in record["detections"]] == [
            (ids[label]["id"], ids[label]["name"]) for label in found["labels"][keep].tolist()]


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


# Precision (``--precision``; fcos_fast.engine.precision.inference_precision).

def test_training_evaluates_at_the_training_precision(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == resolve_precision("auto", "cpu").name  # solver.amp: auto
    assert f"evaluation precision: {metrics['precision']}" in (run / "log.txt").read_text()


def test_evaluation_runs_the_network_at_its_precision(run):
    """``inference(precision=...)``: the network under that autocast (bfloat16 runs on any
    CPU, emulated where not native), post-processing float32."""
    model, config, _ = load_trained_model(run / "checkpoint.pt")
    dataset = build_dataset(config, "val")
    found = inference(model, dataset, batch_size=4, precision=Precision("bf16", "cpu"))
    images = [dataset[index][0] for index in range(len(dataset))]  # one batch of 4
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(images)
    with torch.no_grad():
        float32 = model(images)
    assert sum(len(e["scores"]) for e in expected) > 0
    for got, want in zip(found, expected, strict=True):
        assert got["scores"].dtype == got["boxes"].dtype == torch.float32
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), key
    assert any(not torch.equal(got["scores"], plain["scores"])
               for got, plain in zip(found, float32))


@pytest.mark.parametrize("setting", ["fp32", "auto"])
def test_evaluate_scores_at_its_precision_and_records_it(run, tmp_path, capsys, setting):
    assert evaluate.main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path),
                          "--precision", setting, "--no-progress"]) == 0
    chosen = inference_precision(setting, "cpu")
    layout = "channels-last" if chosen.name == "bf16" else "contiguous"
    assert f"precision: {chosen.name} ({chosen.reason}), backbone {layout}" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == chosen.name


def test_without_native_bf16_inference_is_the_float32_path(run, tmp_path, capsys, monkeypatch):
    """On a CPU without native bfloat16, ``auto`` is float32 with a contiguous backbone:
    the commands run exactly the float32 path they ran before precision was chosen."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    checkpoint = run / "checkpoint.pt"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path),
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "precision: fp32 (the CPU has no native bfloat16" in printed
    assert "backbone contiguous" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "fp32"

    # What the commands do, step by step, against the plain float32 model.
    model, config, _ = load_trained_model(checkpoint)
    precision = inference_precision("auto", "cpu")
    assert precision.dtype is None
    inference_setup(model, precision, config)
    assert all(p.is_contiguous() for p in model.parameters())
    dataset = build_dataset(config, "val")
    ours = inference(model, dataset, batch_size=4, precision=precision)
    plain, _, _ = load_trained_model(checkpoint)
    today = inference(plain, dataset, batch_size=4)
    assert sum(len(found["scores"]) for found in today) > 0
    for got, want in zip(ours, today, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), key
    baseline, _ = evaluate_model(plain, dataset, batch_size=4)
    assert {k: metrics[k] for k in ("mAP", "mAP50", "mAP75")} == {
        k: baseline[k] for k in ("mAP", "mAP50", "mAP75")}


def test_infer_runs_at_the_chosen_precision(run, tmp_path, capsys):
    found = {}
    for setting in ("fp32", "auto"):
        assert infer.main(["--checkpoint", str(run / "checkpoint.pt"), "--out",
                           str(tmp_path / setting), "--num-images", "2", "--scale", "1",
                           "--score-thresh", "0.0", "--precision", setting]) == 0
        found[setting] = json.loads((tmp_path / setting / "detections.json").read_text())
    printed = capsys.readouterr().out
    name = inference_precision("auto", "cpu").name
    assert f"precision: {name} (" in printed
    # bfloat16 moves the scores (4 decimals in the JSON); float32 is float32.
    assert (found["fp32"] != found["auto"]) == (name != "fp32")


@pytest.mark.parametrize("command, value, message", [
    ("evaluate", "half", "--precision must be one of auto, bf16, fp16, fp32, got 'half'"),
    ("infer", "fp16", "--precision fp16 is for GPUs"),
    ("export", "fp16", "--precision fp16 is for GPUs"),
])
def test_bad_precision_is_one_error_line(run, tmp_path, command, value, message):
    out = tmp_path / ("model.pt2" if command == "export" else "out")
    result = subprocess.run([sys.executable, "-m", f"fcos_fast.{command}", "--checkpoint",
                             str(run / "checkpoint.pt"), "--out", str(out), "--precision",
                             value], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and not out.exists()


# bfloat16 forced on a CPU without it: the capability check switched off in the process.
_NO_BF16 = ("import sys, torch\n"
            "torch.cpu._is_avx512_bf16_supported = lambda: False\n"
            "torch.cpu._is_amx_tile_supported = lambda: False\n"
            "from fcos_fast.{command} import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("command", ["evaluate", "infer", "export"])
def test_bf16_without_native_support_is_one_error_line(run, tmp_path, command):
    out = tmp_path / ("model.pt2" if command == "export" else "out")
    module = "export.__main__" if command == "export" else command
    result = subprocess.run([sys.executable, "-c", _NO_BF16.format(command=module),
                             "--checkpoint", str(run / "checkpoint.pt"), "--out", str(out),
                             "--precision", "bf16"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "this CPU has no native bfloat16" in result.stderr and not out.exists()
