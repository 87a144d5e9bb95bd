"""nms and batched_nms at FCOS candidate counts vs torchvision.ops.

Besides random categories, ``batched_nms`` runs at the shapes FCOS post-processing sends
it: a batch of 16 images x 80 classes, each (image, class) its own category of up to
1000 candidates (``benchmarks.cases.postprocess_candidates``).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from benchmarks.cases import clustered_boxes, postprocess_candidates
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

NUM_CLASSES = 80
BATCH = 16
# Candidates per (image, class), at most: post-processing's k (topk_candidates), and a tenth.
POSTPROCESS_PER_CLASS = [100, 1000]


def _inputs(n, device):
    """Detections-like candidates: boxes clustered on objects, so NMS has work to do."""
    g = torch.Generator().manual_seed(n)
    boxes = clustered_boxes(n, clusters=max(n // 40, 1), scale=800.0, generator=g)
    # Distinct scores: torchvision orders equal scores by an unstable sort, and the
    # outputs are compared below.
    scores = torch.randperm(n, generator=g).float() / n
    idxs = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


@functools.cache
def _postprocess_inputs(per_class):
    """Built once per size (on the CPU; a few seconds for the largest)."""
    return postprocess_candidates(batch=BATCH, classes=NUM_CLASSES, per_class=per_class,
                                  generator=torch.Generator().manual_seed(per_class))


def _backends(device):
    # The reference NMS sweeps in Python, one kept box at a time: on big inputs it is
    # timed only where that takes seconds, not minutes.
    return ["torchvision"] + compiled_backends(device)


def _fast_backends(device):
    """Without the reference: its Python sweep takes minutes over a batch's categories."""
    return [b for b in _backends(device) if b != "reference"]


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


def _time_batched_nms(measure, backend, boxes, scores, idxs, expected, size):
    """Check that ``backend`` keeps torchvision's boxes, then time it."""
    if backend == "torchvision":
        fn = lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)  # noqa: E731
    else:
        fn = lambda: ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend)  # noqa: E731
        assert torch.equal(fn().cpu(), expected.cpu()), "a faster NMS must keep the same boxes"
    measure(op="batched_nms", backend=backend, mode="forward", size=size, fn=fn)


@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("backend", _backends(bench_device()))
def test_batched_nms(measure, device, backend, n):
    boxes, scores, idxs = _inputs(n, device)
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    _time_batched_nms(measure, backend, boxes, scores, idxs, expected, f"N={n} C={NUM_CLASSES}")


@functools.cache
def _postprocess_expected(per_class):
    """torchvision's CPU kernel: its CUDA kernel is built with FMA contraction, which over
    ~10^8 pairs may round an IoU next to the threshold the other way (the fcos_fast
    kernels compute it as the CPU does)."""
    return torchvision.ops.batched_nms(*_postprocess_inputs(per_class), 0.5)


@pytest.mark.parametrize("per_class", POSTPROCESS_PER_CLASS)
@pytest.mark.parametrize("backend", _fast_backends(bench_device()))
def test_batched_nms_postprocess(measure, device, backend, per_class):
    boxes, scores, idxs = (t.to(device) for t in _postprocess_inputs(per_class))
    size = f"B={BATCH} C={NUM_CLASSES} k<={per_class} N={boxes.shape[0]}"
    _time_batched_nms(measure, backend, boxes, scores, idxs, _postprocess_expected(per_class),
                      size)
