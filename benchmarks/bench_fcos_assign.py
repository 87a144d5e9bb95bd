"""fcos_assign at FCOS training sizes vs torchvision's P×G matching code."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baselines import torchvision_fcos_matching
from benchmarks.cases import fcos_points, padded_gt, random_boxes
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

IMAGE_SIZE = (800, 1024)  # 17,064 points over strides 8..128
BATCH = 8
NUM_BOXES = [10, 50, 200]


def _inputs(num_boxes: int, device):
    points, lower, upper, radius, strides, counts = fcos_points(IMAGE_SIZE, device=device)
    g = torch.Generator().manual_seed(num_boxes)
    boxes = [random_boxes(num_boxes, scale=800.0, min_size=8.0, generator=g).to(device)
             for _ in range(BATCH)]
    gt, num_gt = padded_gt(boxes)
    return (points, lower, upper, radius, gt, num_gt), (points, strides, counts, boxes)


@pytest.mark.parametrize("num_boxes", NUM_BOXES)
@pytest.mark.parametrize("backend", ["torchvision"] + compiled_backends(bench_device()))
def test_fcos_assign(measure, device, backend, num_boxes):
    args, tv_args = _inputs(num_boxes, device)
    if backend == "torchvision":
        fn = lambda: torchvision_fcos_matching(*tv_args)  # noqa: E731
    else:
        fn = lambda: ops.fcos_assign(*args, backend=backend)  # noqa: E731
    size = f"B={BATCH} P={args[0].shape[0]} G={num_boxes}"
    measure(op="fcos_assign", backend=backend, mode="forward", size=size, fn=fn)
