"""Backend selection: automatic choice, FCOS_FAST_BACKEND, and explicit-backend errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision

from fcos_fast import _extension, ops
from fcos_fast.ops import _dispatch


def _inputs():
    boxes = torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 3], [10, 10, 12, 12]])
    return boxes, torch.tensor([0.9, 0.8, 0.7])


def test_reference_is_always_available():
    assert "reference" in ops.available_backends()
    assert "reference" in ops.available_backends("cpu")
    assert "reference" in ops.available_backends(torch.device("meta"))


def test_native_is_available_when_the_extension_is_built():
    """Whether the extension is built is read from the install, not from the flag the
    package sets: a module ``fcos_fast._C`` on disk must load, list ``native`` and run
    it (torchvision's NMS); without one, ``native`` is not listed."""
    built = importlib.util.find_spec("fcos_fast._C") is not None
    assert ("native" in ops.available_backends("cpu")) == built, _extension.NATIVE_ERROR
    if built:
        boxes, scores = _inputs()
        assert torch.equal(ops.nms(boxes, scores, 0.5, backend="native"),
                           torchvision.ops.nms(boxes, scores, 0.5))


def test_automatic_choice_prefers_native_on_cpu(monkeypatch):
    monkeypatch.delenv(_dispatch.BACKEND_ENV_VAR, raising=False)
    chosen = _dispatch.select("nms", torch.device("cpu"))
    expected = "native" if _extension.NATIVE_AVAILABLE else "reference"
    assert chosen is _dispatch.BACKENDS[expected].implementation("nms")


def test_interpreted_triton_is_never_chosen_automatically(monkeypatch):
    monkeypatch.delenv(_dispatch.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    chosen = _dispatch.select("giou_loss", torch.device("cpu"))
    expected = "native" if _extension.NATIVE_AVAILABLE else "reference"
    assert chosen is _dispatch.BACKENDS[expected].implementation("giou_loss")


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv(_dispatch.BACKEND_ENV_VAR, "reference")
    assert _dispatch.select("nms", torch.device("cpu")) is _dispatch.BACKENDS[
        "reference"].implementation("nms")
    boxes, scores = _inputs()
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_unknown_backend_names_the_choices(monkeypatch):
    boxes, scores = _inputs()
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*native"):
        ops.nms(boxes, scores, 0.5, backend="cuda")
    monkeypatch.setenv(_dispatch.BACKEND_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        ops.nms(boxes, scores, 0.5)


def test_explicit_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    boxes, scores = _inputs()
    with pytest.raises(ValueError, match="backend 'triton' cannot run .*TRITON_INTERPRET=1"):
        ops.nms(boxes, scores, 0.5, backend="triton")
    with pytest.raises(ValueError, match="backend 'native' cannot run .*meta"):
        ops.giou_loss(boxes.to("meta"), boxes.to("meta"), backend="native")


def test_explicit_native_without_extension_says_why(monkeypatch):
    monkeypatch.setattr(_extension, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(_extension, "NATIVE_ERROR", "fcos_fast._C was not built")
    boxes, scores = _inputs()
    with pytest.raises(ValueError, match="fcos_fast._C was not built"):
        ops.nms(boxes, scores, 0.5, backend="native")
    # ...while an automatic choice falls back quietly.
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert "native" not in ops.available_backends("cpu")


@pytest.mark.cuda
def test_cuda_prefers_compiled_backends(gpu, monkeypatch):
    """Automatic selection takes the native kernels on the device (the cuda tests fail
    when a GPU is visible and the build has no CUDA kernels), Triton next on a GPU."""
    monkeypatch.delenv(_dispatch.BACKEND_ENV_VAR, raising=False)
    backends = ops.available_backends(gpu.device)
    assert "reference" in backends and "native" in backends
    for op in _dispatch.OP_NAMES:
        assert _dispatch.select(op, gpu.device) is _dispatch.BACKENDS["native"].implementation(op)
    if gpu.cuda_only("Triton on CUDA"):
        assert "triton" in backends


@pytest.mark.parametrize("op", _dispatch.OP_NAMES)
def test_every_backend_implements_every_op(op):
    """Each op of the registry resolves in every backend that says it can run it."""
    for name, backend in _dispatch.BACKENDS.items():
        if not backend.not_supported_reasons(op, torch.device("cpu")):
            assert callable(_dispatch.select(op, torch.device("cpu"), name)), (op, name)


@pytest.mark.parametrize("op,call", [
    ("per_class_topk_padded", lambda b: ops.per_class_topk_padded(
        torch.rand(5, 2), 3, 0.1, backend=b)),
    ("batched_nms_padded", lambda b: ops.batched_nms_padded(
        torch.rand(2, 3, 4), torch.rand(2, 3), torch.tensor([1, 3]), 0.5, backend=b)),
])
def test_fixed_size_ops_explicit_backend_that_cannot_run_says_why(monkeypatch, op, call):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=f"backend 'triton' cannot run fcos_fast.ops.{op} on "
                                         "cpu: .*TRITON_INTERPRET=1"):
        call("triton")
