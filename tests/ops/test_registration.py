"""torch.library registration: opcheck on every compiled op, fullgraph torch.compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fcos_fast import ops
from tests.ops._cases import backend_matrix, fcos_points, interpreted, padded_gt, random_boxes

BACKENDS = backend_matrix()


def _op_suffix(backend: str) -> str:
    return {"native": "", "triton": "_triton"}[backend]


def _sample_args(device):
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(24, generator=g).to(device)
    scores = torch.rand(24, generator=g).to(device)
    idxs = torch.randint(0, 3, (24,), generator=g).to(device)
    pred = random_boxes(16, min_size=1.0, generator=g).to(device)
    target = (pred + torch.rand(16, 4, generator=g).to(device) * 4)
    points, lower, upper, radius, _, _ = fcos_points((40, 48), device=device)
    gt, num_gt = padded_gt([random_boxes(3, scale=48.0, min_size=4.0, generator=g),
                            random_boxes(1, scale=48.0, min_size=4.0, generator=g)])
    return {
        "nms": (boxes, scores, 0.5),
        "batched_nms": (boxes, scores, idxs, 0.5),
        "giou_loss": (pred.requires_grad_(True), target, "mean", 1e-7),
        "fcos_assign": (points, lower, upper, radius, gt.to(device), num_gt.to(device)),
        "per_class_topk": (torch.rand(30, 4, generator=g).to(device), 5, 0.3),
        "per_class_topk_padded": (torch.rand(30, 4, generator=g).to(device), 5, 0.3),
        "batched_nms_padded": (boxes.view(3, 8, 4), scores.view(3, 8),
                               torch.tensor([8, 0, 5], device=device), 0.5, idxs.view(3, 8)),
        # The fused path: the gradient of the reduced loss from the forward (with_grad).
        "sigmoid_focal_loss": (torch.randn(30, 6, generator=g).to(device).requires_grad_(True),
                               torch.randint(-1, 6, (30,), generator=g).to(device),
                               torch.rand(30, generator=g).to(device), 0.25, 2.0, "mean", True),
    }


@pytest.mark.parametrize("backend,device", backend_matrix(include_reference=False))
@pytest.mark.parametrize("op", ["nms", "batched_nms", "giou_loss", "fcos_assign",
                                "per_class_topk", "per_class_topk_padded",
                                "batched_nms_padded", "sigmoid_focal_loss"])
def test_opcheck(backend, device, op):
    """Schema, fake, autograd registration and dispatch agree (torch.library.opcheck)."""
    args = _sample_args(device)[op]
    overload = getattr(torch.ops.fcos_fast, op + _op_suffix(backend))
    tests = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
    torch.library.opcheck(overload, args, test_utils=tests)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_giou_loss_compiles_fullgraph_forward_and_backward(backend, device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    pred = random_boxes(8 if interpreted(backend, device) else 64, min_size=1.0, generator=g)
    target = pred + torch.rand(pred.shape, generator=g) * 3

    def loss_fn(p, t):
        return ops.giou_loss(p, t, reduction="sum", backend=backend) * 2

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (loss_fn, compiled):
        p = pred.clone().to(device).requires_grad_(True)
        loss = fn(p, target.to(device))
        loss.backward()
        results.append((loss.detach(), p.grad))
    torch.testing.assert_close(results[1], results[0])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fcos_assign_compiles_fullgraph(backend, device):
    torch._dynamo.reset()
    points, lower, upper, radius, _, _ = fcos_points((40, 48), device=device)
    gt, num_gt = padded_gt([random_boxes(4, scale=48.0, min_size=4.0),
                            random_boxes(2, scale=48.0, min_size=4.0)])
    args = (points, lower, upper, radius, gt.to(device), num_gt.to(device))

    def assign(*a):
        return ops.fcos_assign(*a, backend=backend)

    compiled = torch.compile(assign, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), assign(*args))


def test_giou_loss_compiles_with_inductor():
    """The default backend through Inductor (generates and builds C++ on CPU)."""
    torch._dynamo.reset()
    pred = random_boxes(32, min_size=1.0).requires_grad_(True)
    target = random_boxes(32, min_size=1.0)
    compiled = torch.compile(lambda p, t: ops.giou_loss(p, t, reduction="mean"), fullgraph=True)
    loss = compiled(pred, target)
    loss.backward()
    expected = ops.giou_loss(pred.detach(), target, reduction="mean", backend="reference")
    torch.testing.assert_close(loss.detach(), expected)
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_every_triton_op_lists_its_kernels():
    """triton_op finds an op's kernels in ``wrap_triton(<name>)`` calls of its launcher and
    the functions it calls (a ``wrap_triton(module.kernel)`` goes unseen): AOTAutograd's
    cache key hashes them, so an edited kernel is never served stale. The kernels must be
    compiled, not interpreted, to be seen: a subprocess with TRITON_INTERPRET=0 (no GPU
    needed)."""
    pytest.importorskip("triton")
    code = ("import json, torch, fcos_fast.ops, torch._library.triton as t\n"
            "from fcos_fast.ops._dispatch import OP_NAMES\n"
            "ops = list(OP_NAMES) + ['giou_loss_backward', 'sigmoid_focal_loss_backward']\n"
            "print(json.dumps({op: sorted(k.fn.__name__ for k in "
            "t.get_triton_kernels_for_op(f'fcos_fast::{op}_triton')) for op in ops}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    kernels = json.loads(done.stdout)
    assert all(kernels.values()), kernels
    assert kernels["batched_nms_padded"] == ["_nms_mask_kernel", "_nms_sweep_kernel"]
    assert kernels["per_class_topk_padded"] == ["_merge_segments_kernel", "_segment_top_kernel"]
    assert kernels["sigmoid_focal_loss"] == ["_sigmoid_focal_loss_kernel", "_sum_partials_kernel"]
    assert kernels["sigmoid_focal_loss_backward"] == ["_sigmoid_focal_loss_kernel"]
