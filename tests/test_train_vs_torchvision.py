"""The side-by-side training benchmark: same architecture, one run, its report."""

import json
import statistics

import pytest
import torch
from torchvision.models.detection import FCOS as TorchvisionFCOS

from benchmarks import train_vs_torchvision
from fcos_fast.config import load_config
from fcos_fast.engine.build import build_model
from fcos_fast.engine.trainer import HookBase, Trainer
from fcos_fast.model import FCOS
from tests.engine.tiny import tiny_overrides


def test_both_detectors_have_the_same_architecture():
    config = load_config(None)
    ours = build_model(config, 3)
    theirs = train_vs_torchvision.torchvision_model(config, 3)
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())
    assert theirs.head.classification_head.num_classes == 3


class _Recorded(Trainer):
    """The benchmark's trainer, recording what each step got: the batch, the LR, the
    step time; and the evaluation's metrics."""

    runs: list["_Recorded"] = []

    def __init__(self, model, optimizer, data, **kwargs):
        self.batches, self.lrs, self.step_times = [], [], []

        def recorded():
            for images, targets in data:
                self.batches.append(([image.clone() for image in images],
                                     [target["boxes"].clone() for target in targets]))
                self.lrs.append(optimizer.param_groups[0]["lr"])
                yield images, targets

        super().__init__(model, optimizer, recorded(), **kwargs)
        _Recorded.runs.append(self)

    def train(self):
        trainer = self

        class StepTimes(HookBase):
            def after_step(self):
                trainer.step_times.append(trainer.step_time)

        self.register_hooks([StepTimes()])
        super().train()


def test_one_run_trains_both_and_reports(tmp_path, monkeypatch):
    """Both detectors train 3 steps on the same batches at the same LRs; the rows and the
    table report those runs: their median step time, their evaluation's mAPs."""
    evaluations = []

    def evaluate(model, *args, **kwargs):
        """The real evaluation, its mAPs marked (3 steps leave them 0 for both detectors)
        so that the rows can be traced to it."""
        metrics, report = train_vs_torchvision_evaluate(model, *args, **kwargs)
        marked = 0.25 + 0.5 * len(evaluations)
        metrics = {**metrics, "mAP50": marked + metrics["mAP50"] / 8,
                   "mAP": marked / 2 + metrics["mAP"] / 8}
        evaluations.append((type(model), metrics))
        return metrics, report

    train_vs_torchvision_evaluate = train_vs_torchvision.evaluate
    monkeypatch.setattr(train_vs_torchvision, "evaluate", evaluate)
    monkeypatch.setattr(train_vs_torchvision, "Trainer", _Recorded)
    monkeypatch.setattr(_Recorded, "runs", [])
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("solver.max_minutes")]
    results = tmp_path / "results"
    assert train_vs_torchvision.main(["--iters", "3", "--no-readme", "--no-progress",
                                      "--results-dir", str(results), "--set", *overrides]) == 0
    (rows_file,) = results.glob("*.json")
    rows = json.loads(rows_file.read_text())
    assert [row["detector"] for row in rows] == ["torchvision", "fcos_fast"]

    theirs, ours = _Recorded.runs
    assert isinstance(theirs.model, TorchvisionFCOS) and isinstance(ours.model, FCOS)
    assert [type_ for type_, _ in evaluations] == [TorchvisionFCOS, FCOS]
    assert len(theirs.batches) == len(ours.batches) == 3
    for (their_images, their_boxes), (our_images, our_boxes) in zip(theirs.batches,
                                                                     ours.batches):
        assert all(map(torch.equal, their_images, our_images))
        assert all(map(torch.equal, their_boxes, our_boxes))
    assert theirs.lrs == ours.lrs and len(set(ours.lrs)) == 3  # warm-up, then the cosine
    for row, run, (_, metrics) in zip(rows, (theirs, ours), evaluations):
        assert row["iterations"] == 3 and row["skipped_steps"] == 0
        assert row["step_ms"] == pytest.approx(1000 * statistics.median(run.step_times))
        assert row["train_s"] >= sum(run.step_times)
        assert (row["mAP50"], row["mAP"]) == (metrics["mAP50"], metrics["mAP"])
    table = rows_file.with_suffix(".md").read_text()
    speedup = rows[0]["step_ms"] / rows[1]["step_ms"]
    assert (f"| fcos_fast | {rows[1]['step_ms']:.0f} | {speedup:.2f}× | "
            f"{rows[1]['train_s']:.0f} | {rows[1]['mAP50']:.3f} | {rows[1]['mAP']:.3f} |"
            in table.splitlines())
    assert f"| torchvision | {rows[0]['step_ms']:.0f} | 1.00× |" in table


def test_only_the_synthetic_set(tmp_path, capsys):
    assert train_vs_torchvision.main(["--config", "voc_r18.yaml", "--no-readme"]) == 2
    assert "synthetic" in capsys.readouterr().err
