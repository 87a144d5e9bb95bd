"""nms and batched_nms at FCOS candidate counts vs torchvision.ops."""

from __future__ import annotations

import pytest
import torch
import torchvision

from benchmarks.cases import clustered_boxes
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

NUM_CLASSES = 80


def _inputs(n, device):
    """Detections-like candidates: boxes clustered on objects, so NMS has work to do."""
    g = torch.Generator().manual_seed(n)
    boxes = clustered_boxes(n, clusters=max(n // 40, 1), scale=800.0, generator=g)
    # Distinct scores: torchvision orders equal scores by an unstable sort, and the
    # outputs are compared below.
    scores = torch.randperm(n, generator=g).float() / n
    idxs = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def _backends(device):
    # The reference NMS sweeps in Python, one kept box at a time: on big inputs it is
    # timed only where that takes seconds, not minutes.
    return ["torchvision"] + compiled_backends(device)


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("backend", _backends(bench_device()))
def test_nms(measure, device, backend, n):
    boxes, scores, _ = _inputs(n, device)
    if backend == "reference" and n > 1000 and device.type == "cpu":
        pytest.skip("the Python sweep of the reference is too slow to time at this size")
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    if backend == "torchvision":
        fn = lambda: torchvision.ops.nms(boxes, scores, 0.5)  # noqa: E731
    else:
        fn = lambda: ops.nms(boxes, scores, 0.5, backend=backend)  # noqa: E731
    assert torch.equal(fn(), expected), "a faster NMS must keep the same boxes"
    measure(op="nms", backend=backend, mode="forward", size=f"N={n}", fn=fn)


@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("backend", _backends(bench_device()))
def test_batched_nms(measure, device, backend, n):
    boxes, scores, idxs = _inputs(n, device)
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    if backend == "torchvision":
        fn = lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)  # noqa: E731
    else:
        fn = lambda: ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend)  # noqa: E731
    assert torch.equal(fn(), expected), "a faster NMS must keep the same boxes"
    measure(op="batched_nms", backend=backend, mode="forward",
            size=f"N={n} C={NUM_CLASSES}", fn=fn)
