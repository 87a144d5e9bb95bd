"""solver.amp: what ``auto`` picks on each kind of hardware, forced values, bad values; the
float32 islands under autocast (losses, P6/P7); the inference rule (``--precision``, the
backbone's memory format)."""

import os

import pytest
import torch

from fcos_fast.config import ConfigError, load_config
from fcos_fast.engine import precision as precision_module
from fcos_fast.engine.precision import (Precision, inference_channels_last, inference_precision,
                                        resolve_precision, set_inference_memory_format,
                                        use_channels_last)
from fcos_fast.model import resnet_fpn_backbone


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_support(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return set_support


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16"), (False, False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(cpu_bf16, avx512_bf16, amx, expected):
    cpu_bf16(avx512_bf16, amx)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected
    assert chosen.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert not chosen.uses_grad_scaler


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_native_bf16_detection_agrees_with_the_cpu_flags():
    with open("/proc/cpuinfo") as file:
        flags = file.read().split()
    expected = "avx512_bf16" in flags or "amx_bf16" in flags
    assert precision_module.cpu_has_native_bf16() == expected


@pytest.mark.parametrize("major, expected, scaler", [(8, "bf16", False), (9, "bf16", False),
                                                     (7, "fp16", True)])
def test_auto_on_cuda_follows_compute_capability(monkeypatch, major, expected, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    chosen = resolve_precision("auto", "cuda")
    assert (chosen.name, chosen.uses_grad_scaler) == (expected, scaler)


@pytest.mark.parametrize("setting, dtype, scaler", [("bf16", torch.bfloat16, False),
                                                     ("fp16", torch.float16, True),
                                                     ("fp32", None, False)])
def test_forced_values(cpu_bf16, setting, dtype, scaler):
    cpu_bf16(False, False)  # forced values ignore the hardware
    chosen = resolve_precision(setting, "cpu")
    assert (chosen.dtype, chosen.uses_grad_scaler) == (dtype, scaler)
    assert chosen.grad_scaler().is_enabled() == scaler


def test_autocast_context_runs_the_network_in_the_chosen_dtype():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with Precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32


def test_bad_values_are_one_clear_error():
    with pytest.raises(ConfigError, match="solver.amp must be one of auto, bf16, fp16, fp32, "
                                          "got 'float8'"):
        load_config(None, ["solver.amp=float8"])
    with pytest.raises(ValueError, match="solver.amp must be one of"):
        resolve_precision("half", "cpu")


def test_legacy_booleans_still_load():
    assert load_config(None, ["solver.amp=true"]).solver.amp == "auto"
    assert load_config(None, ["solver.amp=false"]).solver.amp == "fp32"
    assert load_config(None).solver.amp == "auto"


def test_channels_last_setting():
    assert use_channels_last(None, "cpu") and not use_channels_last(None, "cuda")
    assert use_channels_last(True, "cuda") and not use_channels_last(False, "cpu")


def test_p6_p7_stay_float32_and_deterministic_under_bf16_autocast():
    """oneDNN's bf16 weight gradient of a stride-2 3x3 conv over a 1x1 input reads
    uninitialised memory on some CPUs; P6/P7 see such inputs for small images, so the
    block runs in float32: its outputs are float32 and its gradients repeat exactly."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", out_channels=64).train()
    images = torch.rand(4, 3, 64, 64)  # P5 2x2 -> P6 1x1 -> P7 from a 1x1 input
    gradients = []
    for _ in range(3):
        backbone.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = backbone(images)
        assert features["p6"].dtype == features["p7"].dtype == torch.float32
        sum(level.float().square().sum() for level in features.values()).backward()
        gradients.append(backbone.fpn.extra_blocks.p7.weight.grad.clone())
    assert all(torch.equal(gradients[0], g) for g in gradients[1:])
    assert torch.isfinite(gradients[0]).all()


def test_losses_are_float32_under_autocast():
    from fcos_fast.model import FCOS

    model = FCOS(3, resnet_fpn_backbone("resnet18", out_channels=64), num_convs=1,
                 _skip_resize=True).train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
               for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(value.dtype == torch.float32 for value in losses.values())


# Inference: the same rule for ``auto``, forced values the device cannot run refused, and
# the backbone's memory format.

@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True), (False, False)])
def test_inference_auto_is_trainings_auto(cpu_bf16, avx512_bf16, amx):
    cpu_bf16(avx512_bf16, amx)
    chosen = inference_precision("auto", "cpu")
    assert chosen == resolve_precision("auto", "cpu")  # name and device
    assert chosen.reason == resolve_precision("auto", "cpu").reason


@pytest.mark.parametrize("major, expected", [(8, "bf16"), (7, "fp16")])
def test_inference_auto_on_cuda(monkeypatch, major, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert inference_precision("auto", "cuda").name == expected


def test_inference_refuses_what_the_device_does_not_run_natively(cpu_bf16, monkeypatch):
    cpu_bf16(True, True)
    assert inference_precision("bf16", "cpu").dtype == torch.bfloat16
    assert inference_precision("fp32", "cpu").dtype is None
    with pytest.raises(ConfigError, match="--precision fp16 is for GPUs"):
        inference_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="--precision must be one of auto, bf16, fp16, fp32, "
                                          "got 'half'"):
        inference_precision("half", "cpu")
    cpu_bf16(False, False)
    with pytest.raises(ConfigError, match="this CPU has no native bfloat16"):
        inference_precision("bf16", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match=r"compute capability 7\.5\) has no bfloat16"):
        inference_precision("bf16", "cuda")
    assert inference_precision("fp16", "cuda").dtype == torch.float16


def test_inference_channels_last_only_under_mixed_precision_on_the_cpu():
    assert inference_channels_last(Precision("bf16", "cpu"))
    assert not inference_channels_last(Precision("fp32", "cpu"))  # float32: as before
    assert not inference_channels_last(Precision("bf16", "cuda"))
    assert not inference_channels_last(Precision("fp16", "cuda"))
    assert inference_channels_last(Precision("fp32", "cpu"), True)  # solver.channels_last
    assert not inference_channels_last(Precision("bf16", "cpu"), False)


def test_set_inference_memory_format_both_ways():
    from fcos_fast.model import FCOS

    model = FCOS(3, resnet_fpn_backbone("resnet18", out_channels=64), num_convs=1)
    weight = model.backbone.body.conv1.weight
    assert set_inference_memory_format(model, Precision("bf16", "cpu"))
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    assert model.head.cls_logits.weight.is_contiguous()  # the head stays contiguous
    assert not set_inference_memory_format(model, Precision("fp32", "cpu"))
    assert model.backbone.body.conv1.weight.is_contiguous()
