"""``scripts/demo.sh`` (``make demo``) end to end, on the tiny network and schedule: what
it promises to write, and that its summary reports the run it made."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from fcos_fast.engine.checkpoint import load_checkpoint
from fcos_fast.engine.precision import inference_precision
from tests.engine.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # six commands, each a fresh interpreter: about 45 s on 2 busy cores
def test_demo_writes_what_it_promises(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    start = time.time()
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(out),
                             *tiny_overrides(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]

    # The training run, with progress bars (the demo does not turn them off).
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iteration"] == 6 and metrics["num_images"] == 4
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 6
    assert "train: 100%" in result.stderr

    # The summary the README's figure comes from: this run's numbers.
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary) == {"seconds", "device", "mAP50", "mAP", "iterations"}
    assert summary["iterations"] == 6
    assert (summary["mAP50"], summary["mAP"]) == (metrics["mAP50"], metrics["mAP"])
    assert 0 < summary["seconds"] < wall
    if torch.cuda.is_available():
        assert summary["device"] == torch.cuda.get_device_name()
    else:
        assert summary["device"].endswith(", 1 threads")  # OMP_NUM_THREADS=1
    assert (f"default run: {summary['seconds'] / 60:.1f} min end to end on {summary['device']}: "
            f"mAP@0.5 {summary['mAP50']:.3f}, mAP {summary['mAP']:.3f} after 6 iterations"
            in result.stdout)

    # The exported model, at auto's precision, checked in a fresh process by the export
    # command.
    assert (out / "model.pt2").stat().st_size > 0
    precision = inference_precision("auto", "cpu").name
    assert re.search(rf"exported {re.escape(str(out / 'model.pt2'))} \(8x3x64x64, backend "
                     rf"\w+, precision {precision}\b.*\): loaded in a fresh process, the "
                     r"same detections as the eager model on 8 val images", result.stdout), (
        result.stdout[-3000:])

    # Detections drawn on the (4) validation images, a grid of them, their COCO results.
    pictures = out / "pictures"
    drawn = sorted(p.name for p in pictures.glob("*.png") if p.name != "grid.png")
    assert len(drawn) == 4
    for name in drawn:  # the 64 px images enlarged 6 times, to at least 384 px
        assert Image.open(pictures / name).size == (384, 384)
    Image.open(pictures / "grid.png").verify()
    detections = json.loads((pictures / "detections.json").read_text())
    assert isinstance(detections, list)
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections)

    # The training curves.
    with Image.open(out / "curves.png") as curves:
        assert curves.format == "PNG" and min(curves.size) > 100
