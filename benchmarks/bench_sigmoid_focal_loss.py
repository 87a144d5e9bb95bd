"""sigmoid_focal_loss forward + backward vs torchvision's composition and the 9 operators
the model used before (``fcos_fast.model.loss.sigmoid_focal_loss_sum``).

Shapes (``[B * P, C]`` logits, 5% of the points foreground, summed as FCOS's
classification loss is):

* COCO: B = 16 images at 800 x 1333, P = 22,300 points, C = 80 (28.5M logits, the
  issue's); also with bfloat16 logits (autocast training: torchvision and the composition
  take them converted to float32, as the model did; the fused op reads them as they are);
* VOC: B = 16 at 512 x 512, P = 5,456, C = 20;
* the default run (``synthetic.yaml``): B = 8 at 192 x 192, P = 769, C = 3.

Each call builds its targets as its user would (torchvision: a float one-hot tensor, as
torchvision's FCOS head does; the composition: a boolean one; the op: the labels), and
the peak memory is what the call adds above the logits (the gradient included).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from benchmarks.conftest import compiled_backends
from benchmarks.harness import bench_device
from fcos_fast import ops
from fcos_fast.model.loss import sigmoid_focal_loss_sum

# name: (images, points per image, classes, logits dtype)
SHAPES = {
    "COCO": (16, 22_300, 80, torch.float32),
    "COCO bf16": (16, 22_300, 80, torch.bfloat16),
    "VOC": (16, 5_456, 20, torch.float32),
    "default run": (8, 769, 3, torch.float32),
}
FOREGROUND = 0.05


@functools.cache
def _inputs(shape: str, device: torch.device):
    images, points, classes, dtype = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    n = images * points
    logits = (torch.randn(n, classes, generator=g) - 4).to(device, dtype)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= FOREGROUND] = -1
    return logits, labels.to(device)


def _size(shape: str) -> str:
    images, points, classes, dtype = SHAPES[shape]
    dtype_name = "" if dtype == torch.float32 else f" {str(dtype).removeprefix('torch.')}"
    return f"{shape}: B={images} P={points} C={classes}{dtype_name}"


def _step(backend: str, logits: torch.Tensor, labels: torch.Tensor):
    """One forward + backward of the summed loss; returns the logits' gradient."""
    classes = logits.shape[1]

    def step():
        x = logits.detach().requires_grad_(True)
        if backend == "torchvision":
            # Its FCOS head's targets: zeros with a 1 at each foreground point's class.
            x32 = x if x.dtype == torch.float32 else x.float()
            targets = torch.zeros_like(x32)
            foreground = labels >= 0
            targets[foreground, labels[foreground]] = 1.0
            loss = torchvision.ops.sigmoid_focal_loss(x32, targets, reduction="sum")
        elif backend == "composition":
            x32 = x if x.dtype == torch.float32 else x.float()
            is_target = labels[:, None] == torch.arange(classes, device=x.device)
            loss = sigmoid_focal_loss_sum(x32, is_target)
        else:
            loss = ops.sigmoid_focal_loss(x, labels, reduction="sum", backend=backend,
                                          check_values=False)
        (loss / 100.0).backward()  # an upstream gradient other than 1, as normalised losses
        return x.grad

    return step


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", ["torchvision", "composition"]
                         + compiled_backends(bench_device()))
def test_sigmoid_focal_loss_forward_backward(measure, device, backend, shape):
    if backend == "reference" and shape.startswith("COCO"):
        pytest.skip("the reference (the readable spec, several [N, C] temporaries) at 28.5M "
                    "logits only repeats what the composition rows show")
    logits, labels = _inputs(shape, device)
    measure(op="sigmoid_focal_loss", backend=backend, mode="forward+backward",
            size=_size(shape), fn=_step(backend, logits, labels))
