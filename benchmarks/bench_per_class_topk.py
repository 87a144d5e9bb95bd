"""per_class_topk at FCOS inference sizes vs a Python loop of torch.topk per class."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baselines import topk_loop_per_class
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

NUM_POINTS = 17_064  # one 800×1024 image over strides 8..128
K = 1000
THRESH = 0.05


@pytest.mark.parametrize("num_classes", [20, 80])
@pytest.mark.parametrize("backend", ["topk_loop"] + compiled_backends(bench_device()))
def test_per_class_topk(measure, device, backend, num_classes):
    g = torch.Generator().manual_seed(num_classes)
    # Detector-like scores: most points are background, about 30% pass the threshold.
    scores = torch.sigmoid(torch.randn(NUM_POINTS, num_classes, generator=g) * 2 - 4)
    scores = scores.to(device)
    if backend == "topk_loop":
        fn = lambda: topk_loop_per_class(scores, K, THRESH)  # noqa: E731
    else:
        fn = lambda: ops.per_class_topk(scores, K, THRESH, backend=backend)  # noqa: E731
    measure(op="per_class_topk", backend=backend, mode="forward",
            size=f"N={NUM_POINTS} C={num_classes} k={K}", fn=fn)
