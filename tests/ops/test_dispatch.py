"""Backend selection: automatic choice, FCOS_FAST_BACKEND, and explicit-backend errors."""

from __future__ import annotations

import pytest
import torch

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
    assert ("native" in ops.available_backends("cpu")) == _extension.NATIVE_AVAILABLE


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
def test_cuda_prefers_compiled_backends(monkeypatch):
    monkeypatch.delenv(_dispatch.BACKEND_ENV_VAR, raising=False)
    backends = ops.available_backends("cuda")
    assert "reference" in backends
    chosen = _dispatch.select("nms", torch.device("cuda"))
    assert chosen is not _dispatch.BACKENDS["reference"].implementation("nms") or backends == [
        "reference"]
