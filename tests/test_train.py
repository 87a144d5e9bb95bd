"""``python -m fcos_fast.train`` end to end on a tiny synthetic experiment: outputs, a
falling loss, exact resume, two-process DDP on CPU, missing data, and the default run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcos_fast import train
from fcos_fast.config import load_config
from fcos_fast.engine.checkpoint import load_checkpoint
from fcos_fast.engine.trainer import Trainer
from tests.engine.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["train/total_loss"] for r in lines if "train/total_loss" in r}


def test_short_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--no-progress", "--set", *tiny_overrides(tmp_path)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mAP", "mAP50", "mAP75", "per_class_AP", "per_class_AP50"} <= set(metrics)
    assert set(metrics["per_class_AP"]) == {"circle", "square", "triangle"}
    assert metrics["iteration"] == 6 and metrics["num_images"] == 4
    assert sorted(_losses(out)) == [1, 2, 3, 4, 5, 6]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["iteration"] == 6 and state["class_names"] == ["circle", "square", "triangle"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_a_schedule_in_epochs(tmp_path):
    """1.5 epochs of 16 images at batch 4 are 6 iterations; the LR steps at epoch 1."""
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{"solver.max_iters": "null", "solver.max_epochs": 1.5,
                                            "solver.warmup_iters": 0,
                                            "solver.lr_schedule": "step",
                                            "solver.steps_epochs": "[1]"})
    assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    assert sorted(_losses(out)) == [1, 2, 3, 4, 5, 6]
    base_lr = load_config(None).solver.base_lr
    assert load_checkpoint(out / "checkpoint.pt")["scheduler"]["_last_lr"][0] == \
        pytest.approx(base_lr * 0.1)
    assert "schedule: 6 iterations" in (out / "log.txt").read_text()
    assert "max_epochs: 1.5" in (out / "config.yaml").read_text()  # stored as written


def test_training_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{"solver.max_iters": 40, "solver.base_lr": 0.02,
                                            "data.synthetic.num_train": 8,
                                            "solver.warmup_iters": 5})
    train.main(["--out", str(out), "--no-progress", "--set", *overrides])
    losses = list(_losses(out).values())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_resume_continues_exactly(tmp_path, monkeypatch):
    overrides = tiny_overrides(tmp_path)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(["--out", str(straight), "--no-progress", "--set", *overrides])

    run_step = Trainer.run_step

    def crash_after_checkpoint(self):
        if self.iter == 4:  # the checkpoint of iteration 3 is on disk
            raise KeyboardInterrupt
        run_step(self)

    monkeypatch.setattr(Trainer, "run_step", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--out", str(interrupted), "--no-progress", "--set", *overrides])
    assert load_checkpoint(interrupted / "checkpoint.pt")["iteration"] == 3
    monkeypatch.setattr(Trainer, "run_step", run_step)
    train.main(["--out", str(interrupted), "--resume", "--no-progress", "--set", *overrides])

    expected, resumed = (load_checkpoint(p / "checkpoint.pt") for p in (straight, interrupted))
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    expected_state, resumed_state = expected["optimizer"]["state"], resumed["optimizer"]["state"]
    assert expected_state.keys() == resumed_state.keys() and expected_state
    for index, state in expected_state.items():  # momentum, or AdamW's moments and step
        assert state.keys() == resumed_state[index].keys()
        for name, value in state.items():
            assert torch.equal(value, resumed_state[index][name]), (index, name)
    assert expected["scheduler"] == resumed["scheduler"]
    assert _losses(straight) == _losses(interrupted)
    metrics = [json.loads((p / "metrics.json").read_text()) for p in (straight, interrupted)]
    assert metrics[0]["mAP"] == metrics[1]["mAP"]


def test_resume_without_checkpoint(tmp_path, capsys):
    code = train.main(["--out", str(tmp_path / "none"), "--resume", "--no-progress",
                       "--set", *tiny_overrides(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--resume: no checkpoint at" in error[0]


def _interrupt_at(monkeypatch, iteration: int) -> None:
    run_step = Trainer.run_step

    def crash(self):
        if self.iter == iteration:
            raise KeyboardInterrupt
        run_step(self)

    monkeypatch.setattr(Trainer, "run_step", crash)


def _tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """A torn newest checkpoint: --resume warns and continues from the previous one, and
    the run still ends exactly where an uninterrupted one does."""
    overrides = tiny_overrides(tmp_path, **{"train.checkpoint_period": 2})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(["--out", str(straight), "--no-progress", "--set", *overrides])

    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)  # checkpoints of iterations 2 and 4 are on disk
        with pytest.raises(KeyboardInterrupt):
            train.main(["--out", str(interrupted), "--no-progress", "--set", *overrides])
    assert load_checkpoint(interrupted / "checkpoint.previous.pt")["iteration"] == 2
    _tear(interrupted / "checkpoint.pt")
    capsys.readouterr()
    assert train.main(["--out", str(interrupted), "--resume", "--no-progress",
                       "--set", *overrides]) == 0
    log = (interrupted / "log.txt").read_text()
    assert "falling back to the previous checkpoint" in log and "cannot be read" in log
    assert "resumed from" in log and "at iteration 2 of 6" in log
    expected, resumed = (load_checkpoint(p / "checkpoint.pt") for p in (straight, interrupted))
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_resume_with_no_usable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    overrides = tiny_overrides(tmp_path, **{"train.checkpoint_period": 2})
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            train.main(["--out", str(out), "--no-progress", "--set", *overrides])
    _tear(out / "checkpoint.pt")
    _tear(out / "checkpoint.previous.pt")
    capsys.readouterr()
    code = train.main(["--out", str(out), "--resume", "--no-progress", "--set", *overrides])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith("error: checkpoint ") and "previous one is unusable" in error[-1]
    assert "Traceback" not in "\n".join(error)


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    # Without ImageNet weights, which are looked for before the data (and tested in
    # tests/model/test_backbone_weights.py).
    code = train.main(["--config", "voc_r18.yaml", "--out", str(tmp_path / "run"),
                       "--set", f"data.root={tmp_path / 'VOCdevkit'}",
                       "model.backbone_weights=null"])
    assert code == 2
    error = capsys.readouterr().err
    assert "Pascal VOC 2007 not found" in error and "VOCtrainval_06-Nov-2007.tar" in error


def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    overrides = tiny_overrides(tmp_path, **{"train.checkpoint_period": 100})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fcos_fast.train", "--out", str(out), "--no-progress", "--set", *overrides],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["iteration"] == 6 and len(state["rng"]) == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4  # the two processes' shares, gathered
    assert all(v == v for v in _losses(out).values())


@pytest.mark.slow
def test_default_run_meets_the_acceptance(default_run):
    """The issue's acceptance on quality: the default experiment, with no arguments, reaches
    mAP@0.5 >= 0.8 on the synthetic held-out split.

    The wall-clock budget (5 minutes on a 2-core CPU) is a speed goal, measured by
    ``make demo`` and reported, not asserted here (the project keeps timings out of unit
    tests). So that the result does not depend on how busy the machine is, the time budget
    (``solver.max_minutes``) is switched off and the full default schedule runs. The
    synthetic set is generated anew into a temporary cache, as on a fresh machine
    (``tests/_trained.py``; the run is shared with the other tests of a learned model).
    """
    metrics = json.loads((default_run / "metrics.json").read_text())
    assert metrics["mAP50"] >= 0.8, metrics


@pytest.mark.cuda
def test_amp_training_on_cuda(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{"train.device": "cuda", "solver.amp": "fp16"})
    assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["scaler"]["scale"] > 0  # the gradient scaler ran
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((out / "metrics.json").read_text())["iteration"] == 6
