"""Data-parallel training optimises the same objective as one process.

Two gloo processes (CPU) with one image each, under ``DistributedDataParallel``, must get
the gradients of one process that sees both images: with ``S_k`` the summed loss of
process k's points and ``N_k`` its foreground count, one process minimises
``(S_0 + S_1) / (N_0 + N_1)``; DDP averages the processes' gradients, so each process's
loss must be ``S_k / N_avg`` with ``N_avg = (N_0 + N_1) / 2`` (official FCOS and
mmdetection all-reduce the count so). The two images get different numbers of
foreground points, so normalising by each process's own count would fail this.

The backbone uses FrozenBatchNorm2d and the head GroupNorm: nothing depends on how the
batch is split across processes except the normaliser under test.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_fast.model import FCOS, loss as loss_module, resnet_fpn_backbone

WORLD_SIZE = 2
NUM_CLASSES = 3


def _tiny_model() -> FCOS:
    """ResNet-18, FPN width 64 (GroupNorm needs two channels per group on the 1x1 P7), one
    conv per head tower, 64 px images."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", norm_layer=FrozenBatchNorm2d, out_channels=64)
    return FCOS(NUM_CLASSES, backbone, min_size=64, max_size=64, num_convs=1)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64x64 images (one size: the padded batch is the same however it is split); the
    first with one small box, the second with three larger ones."""
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[2.0, 4.0, 60.0, 50.0], [20.0, 30.0, 44.0, 62.0],
                                [5.0, 5.0, 26.0, 24.0]]),
         "labels": torch.tensor([0, 2, 1])},
    ]
    return images, targets


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad}


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        model = _tiny_model()
        model.load_state_dict(torch.load(os.path.join(folder, "initial.pt")))
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)

        seen = {}
        normalizer = loss_module.foreground_normalizer

        def recording(foreground):
            seen["local"] = int(foreground.sum())
            value = normalizer(foreground)
            seen["normalizer"] = float(value)
            return value

        loss_module.foreground_normalizer = recording
        images, targets = _batch()
        losses = ddp([images[rank]], [targets[rank]])
        sum(losses.values()).backward()
        loss_module.foreground_normalizer = normalizer

        torch.save(_gradients(model), os.path.join(folder, f"grads{rank}.pt"))
        with open(os.path.join(folder, f"counts{rank}.json"), "w") as file:
            json.dump({**seen, "losses": {k: float(v) for k, v in losses.items()}}, file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_processes_get_the_gradients_of_one(tmp_path):
    model = _tiny_model()
    torch.save(model.state_dict(), tmp_path / "initial.pt")

    # One process, both images.
    model.train()
    images, targets = _batch()
    single_losses = model(images, targets)
    sum(single_losses.values()).backward()
    expected = _gradients(model)

    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)

    counts = [json.loads((tmp_path / f"counts{rank}.json").read_text())
              for rank in range(WORLD_SIZE)]
    local = [c["local"] for c in counts]
    assert local[0] != local[1] and min(local) > 0, local  # the test can tell them apart
    for c in counts:  # the normaliser is the average count, on every process
        assert c["normalizer"] == sum(local) / WORLD_SIZE
    # The processes' losses average to the single process's (what MetricsWriter logs).
    for name, value in single_losses.items():
        average = sum(c["losses"][name] for c in counts) / WORLD_SIZE
        assert average == pytest.approx(float(value), rel=1e-5), name

    # float32: the batch split only reorders sums. The whole gradient within 1e-5 of its
    # norm; each element within rtol 1e-5 (atol 1e-5 of the largest gradient); each tensor
    # within 1e-4 of its own norm: P6/P7's and P5's gradients are 1e-6 of the largest,
    # sums of near-cancelling terms, where reordering costs up to 2.5e-5 (measured).
    scale = max(float(grad.abs().max()) for grad in expected.values())
    expected_norm = float(torch.cat([grad.flatten() for grad in expected.values()]).norm())
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        assert got.keys() == expected.keys()
        total_error = float(torch.cat([(got[name] - grad).flatten()
                                       for name, grad in expected.items()]).norm())
        assert total_error <= 1e-5 * expected_norm, (rank, total_error, expected_norm)
        for name, grad in expected.items():
            error = float((got[name] - grad).norm())
            assert error <= 1e-4 * float(grad.norm()), (rank, name, error, float(grad.norm()))
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5 * scale,
                                       msg=lambda message, name=name: f"{name}: {message}")

    # What each process normalising by its own count would give instead: clearly not it.
    per_process = []
    for image, target in zip(images, targets):
        model.zero_grad()
        sum(model([image], [target]).values()).backward()
        per_process.append(_gradients(model))
    name = "head.box_regression.weight"
    wrong = (per_process[0][name] + per_process[1][name]) / WORLD_SIZE
    assert not torch.allclose(wrong, expected[name], rtol=1e-2, atol=0)


def test_without_a_process_group_the_normalizer_is_the_local_count():
    foreground = torch.zeros(2, 10, dtype=torch.bool)
    assert float(loss_module.foreground_normalizer(foreground)) == 1.0  # at least 1
    foreground[0, :3] = True
    foreground[1, 7] = True
    value = loss_module.foreground_normalizer(foreground)
    assert value.dtype == torch.float32 and float(value) == 4.0
