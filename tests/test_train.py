"""``python -m fcos_fast.train`` end to end on a tiny synthetic experiment: outputs, a
falling loss, exact resume, two-process DDP on CPU, missing data, and the default run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from fcos_fast import train
from fcos_fast.config import load_config
from fcos_fast.engine.checkpoint import load_checkpoint
from fcos_fast.engine.schedule import WarmupSchedule
from fcos_fast.engine.trainer import Trainer
from fcos_fast.model.head import FCOSHead
from tests.data.own_data import write_roboflow
from tests.engine.tiny import tiny_model_overrides, tiny_overrides

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
    assert list((out / "tensorboard").glob("run-*/events.out.tfevents.*"))  # a run of its own
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


def _evaluations(out: Path) -> list[tuple[int, dict[str, float]]]:
    """``(iteration, {eval/...: value})`` per evaluation logged (a repeated one twice)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], {k: v for k, v in r.items() if k.startswith("eval/")})
            for r in lines if "eval/mAP" in r]


@pytest.mark.parametrize("extra", [
    {},
    # The recipes' path: loader worker processes, and evaluations during training.
    {"data.num_workers": 2, "train.eval_period": 2},
], ids=["in-process", "workers-and-periodic-evaluation"])
def test_resume_continues_exactly(tmp_path, monkeypatch, extra):
    overrides = tiny_overrides(tmp_path, **extra)
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
    assert _evaluations(straight) == _evaluations(interrupted)
    if extra:
        assert [i for i, _ in _evaluations(straight)] == [2, 4, 6]  # periodic, then final
    metrics = [json.loads((p / "metrics.json").read_text()) for p in (straight, interrupted)]
    assert metrics[0]["mAP"] == metrics[1]["mAP"]


def test_evaluating_during_training_changes_nothing_in_it(tmp_path):
    """The default run evaluates every 250 iterations: the trained weights and the losses
    are those of a run that evaluates only at the end."""
    runs = {}
    for period in (0, 2):
        out = tmp_path / f"every{period}"
        overrides = tiny_overrides(tmp_path, **{"train.eval_period": period})
        assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
        runs[period] = out
    quiet, evaluating = (load_checkpoint(runs[p] / "checkpoint.pt") for p in (0, 2))
    for key, value in quiet["model"].items():
        assert torch.equal(value, evaluating["model"][key]), key
    assert _losses(runs[0]) == _losses(runs[2])
    assert [i for i, _ in _evaluations(runs[2])] == [2, 4, 6]


class _FakeClock:
    """``time.time`` and ``time.perf_counter`` of a run whose every step takes exactly one
    second and every evaluation ``eval_seconds`` (nothing else takes any time)."""

    def __init__(self, eval_seconds: float) -> None:
        self.now, self.eval_seconds = 0.0, eval_seconds

    def time(self) -> float:
        return 1.7e9 + self.now

    def perf_counter(self) -> float:
        return self.now

    def install(self, monkeypatch) -> None:
        from fcos_fast.engine import hooks, trainer

        for module in (train, hooks, trainer):
            monkeypatch.setattr(module, "time", self)
        run_step, evaluate = Trainer.run_step, train.evaluate

        def step(trainer_self):
            run_step(trainer_self)
            self.now += 1.0

        def evaluation(*args, **kwargs):
            self.now += self.eval_seconds
            return evaluate(*args, **kwargs)

        monkeypatch.setattr(Trainer, "run_step", step)
        monkeypatch.setattr(train, "evaluate", evaluation)


def test_time_budget_shortens_the_run_and_refits_the_cosine(tmp_path, monkeypatch):
    """``solver.max_minutes`` end to end, on a clock where a step takes 1 s and an
    evaluation 2 s: a budget of 60 s (15 of them kept for checkpoints and exit) for 200
    iterations with an evaluation every 20.

    At iteration 10 (the first check) 34.5 s are left once the final evaluation is paid
    for (estimated at half a step before one ran): the two periodic evaluations (0.5 s
    each) with 33 steps fit, and 2% short of that the run is shortened to 42. At
    iteration 30 the evaluation at 20 has taken 2 s: 11 s left after the final one, 10
    steps fit before the evaluation at 40 would be due; shortened to 39. From each
    shortening on, the LR follows the cosine of the new length, reaching 0 at its end;
    the whole run takes 43 s."""
    clock = _FakeClock(eval_seconds=2.0)
    clock.install(monkeypatch)
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{
        "solver.max_iters": 200, "solver.max_minutes": 1, "train.eval_period": 20,
        "train.checkpoint_period": 1000})
    assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    log = (out / "log.txt").read_text()
    assert "time budget of 1.0 min: schedule shortened from 200 to 42 iterations" in log
    assert "time budget of 1.0 min: schedule shortened from 42 to 39 iterations" in log
    assert sorted(_losses(out)) == list(range(1, 40))
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["iteration"], state["max_iter"]) == (39, 39)
    assert [i for i, _ in _evaluations(out)] == [20, 39]
    assert clock.now == 39 + 2 * 2.0 <= 60 - 15

    # The LR of every step (logged before the scheduler steps): the 200-iteration cosine
    # up to the first re-plan, then the 42-iteration one, then the 39-iteration one.
    solver = load_config(None).solver
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lr = {r["iter"]: r["train/lr"] for r in lines if "train/lr" in r}
    for iteration in range(1, 40):
        length = 200 if iteration <= 10 else 42 if iteration <= 30 else 39
        schedule = WarmupSchedule(length, "cosine", warmup_iters=2,
                                  warmup_factor=solver.warmup_factor)
        expected = solver.base_lr * schedule(iteration - 1)
        assert lr[iteration] == pytest.approx(expected, rel=1e-6), (iteration, length)
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((out / "metrics.json").read_text())["iteration"] == 39


def test_resume_reads_the_runs_own_config(tmp_path, monkeypatch):
    """``--resume`` with neither ``--config`` nor ``--set`` continues the run of
    ``<out>/config.yaml``, not the default config."""
    overrides = tiny_overrides(tmp_path)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(["--out", str(straight), "--no-progress", "--set", *overrides])
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            train.main(["--out", str(interrupted), "--no-progress", "--set", *overrides])
    assert train.main(["--out", str(interrupted), "--resume", "--no-progress"]) == 0
    expected, resumed = (load_checkpoint(p / "checkpoint.pt") for p in (straight, interrupted))
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert _losses(straight) == _losses(interrupted)


def test_resume_makes_a_finished_run_longer(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path)
    assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    assert train.main(["--out", str(out), "--resume", "--no-progress",
                       "--set", "solver.max_iters=10"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["iteration"], state["max_iter"]) == (10, 10)
    assert sorted(_losses(out)) == list(range(1, 11))
    log = (out / "log.txt").read_text()
    assert "resume: the run of 6 iterations (steps []) is now 10 (cosine, steps []) from " \
           "iteration 6 on" in log
    # The cosine of 10 iterations from iteration 6 on (the warm-up of 2 kept).
    schedule = WarmupSchedule(10, "cosine", warmup_iters=2)
    base_lr = load_config(None).solver.base_lr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lr = {r["iter"]: r["train/lr"] for r in lines if "train/lr" in r}
    assert lr[7] == pytest.approx(base_lr * schedule(6)) and lr[10] == \
        pytest.approx(base_lr * schedule(9))
    assert "max_iters: 10" in (out / "config.yaml").read_text()
    # Its config now says 10: a resume without --set has nothing left to do.
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 10


@pytest.mark.parametrize("override, message", [
    ("solver.max_iters=4", "the run is at iteration 6 already, and solver.max_iters 4 (4 "
                           "iterations) ends there or before"),
    ("solver.base_lr=0.5", "solver.base_lr 0.5 (the run has 0.001)"),
    ("solver.optimizer=sgd", "solver.optimizer 'sgd' (the run has 'adamw')"),
    ("data.synthetic.shapes=[circle, square]", "the classes of checkpoint"),
])
def test_resume_refuses_what_it_cannot_honour(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--no-progress", "--set", *tiny_overrides(tmp_path)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train.main(["--out", str(out), "--resume", "--no-progress", "--set", override]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error, error
    assert (out / "checkpoint.pt").read_bytes() == before


def test_a_rerun_into_the_same_folder_is_a_new_tensorboard_run(tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{"solver.max_iters": 3})
    for _ in range(2):
        assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    runs = sorted((out / "tensorboard").iterdir())
    assert len(runs) == 2 and all(list(run.glob("events.out.tfevents.*")) for run in runs)
    assert train.main(["--out", str(out), "--resume", "--no-progress",
                       "--set", "solver.max_iters=4"]) == 0
    assert sorted((out / "tensorboard").iterdir()) == runs  # a resumed run continues its own
    assert "iter 4/4  cls_loss" in capsys.readouterr().err  # losses on the console too


def test_files_of_a_run_have_the_umasks_mode(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        overrides = tiny_overrides(tmp_path, **{"solver.max_iters": 4})  # checkpoints at 3, 4
        assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "checkpoint.previous.pt", "metrics.json", "config.yaml"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


def test_an_empty_training_set_says_so(tmp_path, capsys):
    root = write_roboflow(tmp_path / "data")
    annotations = root / "train" / "_annotations.coco.json"
    data = json.loads(annotations.read_text())
    annotations.write_text(json.dumps({**data, "annotations": []}))
    code = train.main(["--config", "coco_r18.yaml", "--out", str(tmp_path / "run"), "--set",
                       f"data.train_images={root / 'train'}", f"data.train_annotations={annotations}",
                       f"data.val_images={root / 'valid'}",
                       f"data.val_annotations={root / 'valid' / '_annotations.coco.json'}",
                       *tiny_model_overrides()])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error == (
        f"error: the training set is empty: {annotations} lists no images once "
        f"data.filter_empty left out the images without objects; there is nothing to train on")


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


def _assert_same_weights(got: dict, expected: dict, what: str) -> None:
    """Every tensor of ``got`` within float32 reordering error of ``expected``'s: the
    runs sum the same per-image terms in other orders (the batch split between processes,
    the gradients' all-reduce), a few ulps of each gradient, which SGD's update keeps as
    small (measured: 1.5e-8 at most after 6 steps; a missing all-reduce: 3e-3)."""
    assert got.keys() == expected.keys(), what
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda message, name=name: f"{what}, {name}: {message}")


def test_two_processes_train_as_one_on_their_concatenated_batches(tmp_path):
    """``torchrun --nproc_per_node 2 -m fcos_fast.train`` (DDP on gloo): the processes
    read different images (each its shard of every batch of 4) and end with identical
    weights, those of one process training on the whole batches. The negative control,
    the same two processes without the gradient all-reduce (tests/engine/ddp_worker.py),
    ends with weights that differ between them and from one process's, so that a trainer
    without the DDP wrap, or with both processes reading one shard, fails this test.

    Exact to float tolerance because nothing else depends on the split: frozen BatchNorm
    (backbone weights from a file, as for pretrained ones), GroupNorm in the head, every
    image 64 x 64 (one padded size), and the augmentation of a sample seeded by its
    position in the global stream, whichever process reads it."""
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    # float32 and SGD (updates linear in the gradients): exact to float tolerance.
    settings = {"model.backbone_weights": weights, "solver.amp": "fp32",
                "solver.optimizer": "sgd", "solver.base_lr": 0.01,
                "train.checkpoint_period": 100}
    overrides = ["--set", *tiny_overrides(tmp_path, **settings)]
    single = tmp_path / "single"
    assert train.main(["--out", str(single), "--no-progress", *overrides]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests" / "engine" / "ddp_worker.py"), str(tmp_path), *overrides],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    expected = load_checkpoint(single / "checkpoint.pt")["model"]
    synced, unsynced = ([torch.load(tmp_path / run / f"weights{rank}.pt") for rank in (0, 1)]
                        for run in ("synced", "unsynced"))
    for name, value in synced[0].items():
        assert torch.equal(value, synced[1][name]), name  # one all-reduced gradient
    _assert_same_weights(synced[0], expected, "two processes")
    for rank in (0, 1):
        with pytest.raises(AssertionError):
            _assert_same_weights(unsynced[rank], expected, f"unsynced rank {rank}")
    assert any(not torch.equal(value, unsynced[1][name])
               for name, value in unsynced[0].items())
    # The losses logged (averaged over the processes) are the single process's.
    losses = _losses(tmp_path / "synced")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses == pytest.approx(_losses(single), rel=1e-5)

    out = tmp_path / "synced"
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["iteration"] == 6 and len(state["rng"]) == 2
    for name, value in state["model"].items():
        assert torch.equal(value, synced[0][name]), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4  # the two processes' shares, gathered


@pytest.mark.slow
def test_default_run_meets_the_acceptance(default_run):
    """The issue's acceptance on quality: the default experiment, with no arguments, reaches
    mAP@0.5 >= 0.9 on the synthetic held-out split (measured on five floating-point paths:
    0.953-0.960; 0.9 leaves 0.05 under the lowest, and SGD in place of the recipe's
    optimizer, 0.890 at its best LR, fails it).

    The wall-clock budget (5 minutes on a 2-core CPU) is a speed goal, measured by
    ``make demo`` and reported, not asserted here (the project keeps timings out of unit
    tests). So that the result does not depend on how busy the machine is, the time budget
    (``solver.max_minutes``) is switched off and the full default schedule runs. The
    synthetic set is generated anew into a temporary cache, as on a fresh machine
    (``tests/_trained.py``; the run is shared with the other tests of a learned model).
    """
    metrics = json.loads((default_run / "metrics.json").read_text())
    assert metrics["mAP50"] >= 0.9, metrics


@pytest.mark.cuda
def test_amp_training_on_cuda(tmp_path, gpu, monkeypatch):
    """float16 with the gradient scaler, on a GPU and, the very same run, on the CPU (the
    rehearsal; bfloat16, what ``auto`` picks there, is what the other runs train in).

    The network runs in float16 (the head's outputs), and the scaler takes part
    in every step: from its initial scale, each step either goes through (the growth
    tracker counts it) or overflows (the step is skipped, the scale halves, the tracker
    restarts); at least one goes through, and the checkpoint holds the scaler's state."""
    history = []  # (scale, growth tracker) after every step
    head_dtypes = set()  # of the head's outputs (class logits, boxes, centerness)
    run_step = Trainer.run_step

    def recording(self):
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, inputs, output: head_dtypes.add(tuple(t.dtype for t in output))
            if isinstance(module, FCOSHead) else None)
        try:
            run_step(self)
        finally:
            handle.remove()
        history.append((self.scaler.get_scale(), self.scaler._get_growth_tracker()))

    monkeypatch.setattr(Trainer, "run_step", recording)
    out = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, **{"train.device": gpu.device.type, "solver.amp": "fp16"})
    assert train.main(["--out", str(out), "--no-progress", "--set", *overrides]) == 0
    assert "precision: fp16 (set by solver.amp)" in (out / "log.txt").read_text()
    assert head_dtypes == {(torch.float16,) * 3}
    scale, tracker = torch.amp.GradScaler(gpu.device.type).get_scale(), 0
    assert scale == 2.0 ** 16 and len(history) == 6
    for step, (step_scale, step_tracker) in enumerate(history, 1):
        assert (step_scale, step_tracker) in ((scale, tracker + 1), (scale / 2, 0)), (
            step, history)
        scale, tracker = step_scale, step_tracker
    assert sum(t > 0 for _, t in history) >= 1, history  # some steps updated the weights
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["scaler"]["scale"], state["scaler"]["_growth_tracker"]) == (scale, tracker)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((out / "metrics.json").read_text())["iteration"] == 6
