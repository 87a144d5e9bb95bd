"""The side-by-side training benchmark: same architecture, one run, its report."""

import json

import pytest

from benchmarks import train_vs_torchvision
from fcos_fast.config import load_config
from fcos_fast.engine.build import build_model
from tests.engine.tiny import tiny_overrides


def test_both_detectors_have_the_same_architecture():
    config = load_config(None)
    ours = build_model(config, 3)
    theirs = train_vs_torchvision.torchvision_model(config, 3)
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())
    assert theirs.head.classification_head.num_classes == 3


def test_one_run_trains_both_and_reports(tmp_path, capsys):
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("solver.max_minutes")]
    results = tmp_path / "results"
    assert train_vs_torchvision.main(["--iters", "3", "--no-readme", "--no-progress",
                                      "--results-dir", str(results), "--set", *overrides]) == 0
    (rows_file,) = results.glob("*.json")
    rows = json.loads(rows_file.read_text())
    assert [row["detector"] for row in rows] == ["torchvision", "fcos_fast"]
    assert all(row["iterations"] == 3 and row["step_ms"] > 0 and 0 <= row["mAP50"] <= 1
               for row in rows)
    table = rows_file.with_suffix(".md").read_text()
    assert "| torchvision |" in table and "| fcos_fast |" in table


def test_only_the_synthetic_set(tmp_path, capsys):
    assert train_vs_torchvision.main(["--config", "voc_r18.yaml", "--no-readme"]) == 2
    assert "synthetic" in capsys.readouterr().err
