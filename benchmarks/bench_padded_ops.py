"""The fixed-size ops against the dynamic ones, at FCOS post-processing's shapes.

A batch of 16 images x 80 classes, k = 1000 candidates per (image, class), 17,064 points
per image (800 x 1024 over strides 8..128):

* ``per_class_topk_padded`` on the ``[N, B * C]`` score columns post-processing builds,
  against the per-class ``torch.topk`` loop (the baseline) and the dynamic
  ``per_class_topk`` of the same backend (rows ``<backend> dynamic``);
* ``batched_nms_padded`` on ``[B * C, k]`` segments, against torchvision's
  ``batched_nms`` (the baseline) and the dynamic ``batched_nms`` of the same backend, both
  on the used candidates packed, which is what they get from ``per_class_topk``.

The fixed-size ops pay for their static shapes (every slot is sorted, the NMS mask is
allocated for full segments) and save the host synchronisations of the dynamic ones.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from benchmarks.baselines import topk_loop_per_class
from benchmarks.cases import postprocess_candidates
from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops

BATCH, NUM_CLASSES, K = 16, 80, 1000
NUM_POINTS = 17_064
THRESH = 0.05
NMS_THRESH = 0.6


def _variants(baseline, fixed, dynamic):
    """The baseline, each backend's fixed-size op, and each backend's dynamic op."""
    return [baseline] + fixed + [f"{b} dynamic" for b in dynamic]


def _nms_variants(device):
    """Without the dynamic reference NMS (a Python sweep per category: minutes over 1280
    categories), and on a CPU without the fixed-size reference either (its 1000 steps over
    1280 x 1000 slots take tens of seconds there)."""
    backends = compiled_backends(device)
    fixed = [b for b in backends if b != "reference" or device.type == "cuda"]
    return _variants("torchvision", fixed, [b for b in backends if b != "reference"])


@functools.cache
def _topk_scores():
    g = torch.Generator().manual_seed(0)
    # Detector-like scores: most points are background, about 30% pass the threshold.
    return torch.sigmoid(torch.randn(NUM_POINTS, BATCH * NUM_CLASSES, generator=g) * 2 - 4)


@pytest.mark.parametrize("backend", _variants("topk_loop", compiled_backends(bench_device()),
                                              compiled_backends(bench_device())))
def test_per_class_topk_padded(measure, device, backend):
    scores = _topk_scores().to(device)
    size = f"B={BATCH} C={NUM_CLASSES} N={NUM_POINTS} k={K}"
    if backend == "topk_loop":
        fn = lambda: topk_loop_per_class(scores, K, THRESH)  # noqa: E731
    elif backend.endswith(" dynamic"):
        name = backend.removesuffix(" dynamic")
        fn = lambda: ops.per_class_topk(scores, K, THRESH, backend=name)  # noqa: E731
    else:
        fn = lambda: ops.per_class_topk_padded(scores, K, THRESH, backend=backend)  # noqa: E731
        top_scores, top_index, counts = fn()
        used = torch.arange(top_index.shape[1], device=device) < counts[:, None]
        expected = ops.per_class_topk(scores, K, THRESH, backend=backend)
        assert torch.equal(top_index[used], expected[1]), "other candidates than per_class_topk"
        assert torch.equal(top_scores[used], expected[0])
    measure(op="per_class_topk_padded", backend=backend, mode="forward", size=size, fn=fn)


@functools.cache
def _nms_inputs():
    """Packed candidates (postprocess_candidates: by category, then score) and the same in
    [B * C, k] segments."""
    boxes, scores, idxs = postprocess_candidates(batch=BATCH, classes=NUM_CLASSES, per_class=K,
                                                 generator=torch.Generator().manual_seed(K))
    segments = BATCH * NUM_CLASSES
    counts = torch.bincount(idxs, minlength=segments)
    slot = torch.arange(idxs.shape[0]) - (torch.cumsum(counts, 0) - counts)[idxs]
    padded_boxes = torch.zeros(segments, K, 4, dtype=boxes.dtype)
    padded_scores = torch.zeros(segments, K, dtype=scores.dtype)
    padded_boxes[idxs, slot] = boxes
    padded_scores[idxs, slot] = scores
    return (boxes, scores, idxs), (padded_boxes, padded_scores, counts)


@functools.cache
def _nms_expected():
    """torchvision's CPU kernel (its CUDA kernel contracts to FMAs; see bench_nms.py)."""
    (boxes, scores, idxs), _ = _nms_inputs()
    return torchvision.ops.batched_nms(boxes, scores, idxs, NMS_THRESH)


@pytest.mark.parametrize("backend", _nms_variants(bench_device()))
def test_batched_nms_padded(measure, device, backend):
    packed, padded = _nms_inputs()
    boxes, scores, idxs = (t.to(device) for t in packed)
    padded_boxes, padded_scores, counts = (t.to(device) for t in padded)
    size = f"B={BATCH} C={NUM_CLASSES} k<={K} N={boxes.shape[0]}"
    if backend == "torchvision":
        fn = lambda: torchvision.ops.batched_nms(boxes, scores, idxs, NMS_THRESH)  # noqa: E731
    elif backend.endswith(" dynamic"):
        name = backend.removesuffix(" dynamic")
        fn = lambda: ops.batched_nms(boxes, scores, idxs, NMS_THRESH,  # noqa: E731
                                     backend=name, check_values=False)
        assert torch.equal(fn().cpu(), _nms_expected())
    else:
        fn = lambda: ops.batched_nms_padded(  # noqa: E731
            padded_boxes, padded_scores, counts, NMS_THRESH, backend=backend,
            check_values=False)
        # The same boxes: the kept slots, in packed order, are torchvision's kept indices.
        used = torch.arange(K, device=device) < counts[:, None]
        kept = torch.nonzero(fn()[used]).flatten().cpu()
        assert torch.equal(kept, _nms_expected().sort().values), "other boxes than torchvision"
    measure(op="batched_nms_padded", backend=backend, mode="forward", size=size, fn=fn)
