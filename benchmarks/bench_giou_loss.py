"""giou_loss forward and forward+backward vs torchvision.ops.generalized_box_iou_loss."""

from __future__ import annotations

import pytest
import torch
import torchvision

from benchmarks.cases import random_boxes
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

NUM_BOXES = [10_000, 100_000]


def _loss(backend):
    if backend == "torchvision":
        return lambda p, t: torchvision.ops.generalized_box_iou_loss(p, t, reduction="sum")
    return lambda p, t: ops.giou_loss(p, t, reduction="sum", backend=backend)


def _inputs(n, device):
    g = torch.Generator().manual_seed(n)
    target = random_boxes(n, scale=800.0, min_size=4.0, generator=g)
    pred = target + (torch.rand(n, 4, generator=g) - 0.5) * 40
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 1)
    return pred.to(device), target.to(device)


@pytest.mark.parametrize("n", NUM_BOXES)
@pytest.mark.parametrize("backend", ["torchvision"] + compiled_backends(bench_device()))
def test_giou_forward(measure, device, backend, n):
    pred, target = _inputs(n, device)
    loss = _loss(backend)
    measure(op="giou_loss", backend=backend, mode="forward", size=f"N={n}",
            fn=lambda: loss(pred, target))


@pytest.mark.parametrize("n", NUM_BOXES)
@pytest.mark.parametrize("backend", ["torchvision"] + compiled_backends(bench_device()))
def test_giou_forward_backward(measure, device, backend, n):
    pred, target = _inputs(n, device)
    loss = _loss(backend)

    def step():
        p = pred.detach().requires_grad_(True)
        loss(p, target).backward()
        return p.grad

    measure(op="giou_loss", backend=backend, mode="forward+backward", size=f"N={n}", fn=step)
