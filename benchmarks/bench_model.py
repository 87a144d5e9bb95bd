"""The whole detector: our FCOS against torchvision's FCOS of the same architecture.

Both models hold the same weights (ours is built with ``from_torchvision``, per-level
top-k, so both do the same work) and get the same inputs in the same run:

* ``train_step``: forward and backward of a batch with targets (gradients reset each
  call, as a training loop does);
* ``inference``: ``model(images)`` in eval mode, resize to detections.

On CPU the sizes are modest (ResNet-18, two images at 256 px); on a GPU they are the
FCOS training setting (ResNet-50, batch 8 at 800 px, 80 classes).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision

from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast.model import from_torchvision
from tests.model._helpers import random_batch, torchvision_fcos

ON_GPU = bench_device().type == "cuda"
if ON_GPU:
    DEPTH, BATCH, MIN_SIZE, MAX_SIZE, NUM_CLASSES, MAX_BOXES = "resnet50", 8, 800, 1333, 80, 50
else:
    DEPTH, BATCH, MIN_SIZE, MAX_SIZE, NUM_CLASSES, MAX_BOXES = "resnet18", 2, 256, 384, 20, 10
SIZE = f"{DEPTH} B={BATCH} min_size={MIN_SIZE} C={NUM_CLASSES}"
# The COCO-evaluation threshold: with the head below, thousands of candidates per image
# reach NMS, as early in training.
SCORE_THRESH = 0.05


def _torchvision_fcos(device: torch.device) -> torchvision.models.detection.FCOS:
    """torchvision's FCOS with a head whose detections make postprocessing do real work.

    Freshly initialised, every score is about ``sqrt(0.01 * 0.5) = 0.07`` and every box
    empty; here the class prior is 0.1 (scores near 0.22) and boxes are 4 strides wide,
    so candidates overlap and NMS suppresses.
    """
    torch.manual_seed(0)
    model = torchvision_fcos(NUM_CLASSES, depth=DEPTH, min_size=MIN_SIZE, max_size=MAX_SIZE,
                             score_thresh=SCORE_THRESH)
    head = model.head
    with torch.no_grad():
        head.classification_head.cls_logits.bias.fill_(-math.log((1 - 0.1) / 0.1))
        head.regression_head.bbox_reg.bias.fill_(2.0)
    return model.to(device)


def _batch(device: torch.device):
    """``BATCH`` images of FCOS-like sizes with 1 to ``MAX_BOXES`` boxes each."""
    return random_batch(torch.Generator().manual_seed(0), NUM_CLASSES, num_images=BATCH,
                        sizes=(MIN_SIZE, MIN_SIZE * 4 // 3), max_boxes=MAX_BOXES,
                        empty_image=False, device=device)


@functools.cache
def _setup(device: torch.device):
    return _torchvision_fcos(device), _batch(device)


def _model(backend: str, device: torch.device) -> torch.nn.Module:
    tv_model, _ = _setup(device)
    return tv_model if backend == "torchvision" else from_torchvision(tv_model, backend=backend)


BACKENDS = ["torchvision"] + compiled_backends(bench_device())


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step(measure, device, backend):
    model = _model(backend, device)
    images, targets = _setup(device)[1]

    def train_step():
        # The mode is set per call: the torchvision model is shared between the tests,
        # and peak memory is measured after all of them have run.
        model.train()
        model.zero_grad(set_to_none=True)
        sum(model(images, targets).values()).backward()

    measure(op="fcos_model", backend=backend, mode="train_step", size=SIZE, fn=train_step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference(measure, device, backend):
    model = _model(backend, device)
    images = _setup(device)[1][0]

    @torch.no_grad()
    def inference():
        model.eval()
        return model(images)

    measure(op="fcos_model", backend=backend, mode="inference", size=SIZE, fn=inference)
