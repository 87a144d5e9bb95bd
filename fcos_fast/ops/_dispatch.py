"""Backend registry and selection for the fcos_fast operators.

Three backends implement every op:

* ``reference`` — pure PyTorch (``fcos_fast/ops/reference/``), the readable spec.
* ``native`` — the compiled extension ``fcos_fast._C``: C++ on CPU tensors, CUDA on CUDA
  tensors (``torch.ops.fcos_fast.<op>``).
* ``triton`` — Triton kernels (``fcos_fast.kernels``, ``torch.ops.fcos_fast.<op>_triton``):
  on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.

Selection looks at metadata only (device type, what is built), so it is free under
``torch.compile``. Each backend says why it cannot run a call; an automatically chosen
backend falls through quietly to the next one, an explicitly requested one raises
with those reasons.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import torch

from fcos_fast import _extension
from fcos_fast.ops._validate import InputError

BACKEND_ENV_VAR = "FCOS_FAST_BACKEND"

OP_NAMES = ("nms", "batched_nms", "giou_loss", "fcos_assign", "per_class_topk",
            "per_class_topk_padded", "batched_nms_padded", "sigmoid_focal_loss")

# Preference order when no backend is asked for. The interpreted Triton backend is never
# picked automatically on CPU: the interpreter is for testing, and it is slow.
_AUTO_ORDER = {
    "cuda": ("native", "triton", "reference"),
    "cpu": ("native", "reference"),
}


class Backend:
    """One implementation of every op. Subclasses say where they can run."""

    name: str

    def load(self) -> None:
        """Resolve what this backend can run, once, at import."""

    def not_supported_reasons(self, op: str, device: torch.device) -> list[str]:
        """Why this backend cannot run ``op`` on ``device`` (empty when it can)."""
        raise NotImplementedError

    def implementation(self, op: str) -> Callable:
        raise NotImplementedError


class ReferenceBackend(Backend):
    name = "reference"

    def __init__(self):
        self._ops = {}

    def load(self):
        for op in OP_NAMES:
            module = importlib.import_module(f"fcos_fast.ops.reference.{_module_of(op)}")
            self._ops[op] = getattr(module, op)

    def not_supported_reasons(self, op, device):
        return []

    def implementation(self, op):
        return self._ops[op]


class NativeBackend(Backend):
    name = "native"

    def __init__(self):
        self._kernels: dict[tuple[str, str], bool] = {}

    def load(self):
        """Ask the dispatcher once which kernels this build has (not traceable per call)."""
        for op in OP_NAMES:
            for device_type in ("cpu", "cuda"):
                self._kernels[(op, device_type)] = _extension.native_has_kernel(op, device_type)

    def not_supported_reasons(self, op, device):
        if not _extension.NATIVE_AVAILABLE:
            return [_extension.NATIVE_ERROR or "the extension fcos_fast._C is not built"]
        if device.type not in ("cpu", "cuda"):
            return [f"no native kernel for device type {device.type!r}"]
        if not self._kernels.get((op, device.type), False):
            return [
                f"fcos_fast._C was built without {device.type.upper()} kernels for {op!r} "
                "(rebuild with a CUDA toolkit and a CUDA build of torch)"
            ]
        return []

    def implementation(self, op):
        return getattr(torch.ops.fcos_fast, op)


class TritonBackend(Backend):
    name = "triton"

    def __init__(self):
        self._ops = {}
        self._load_error: str | None = "not loaded yet"

    def load(self):
        """Import the kernels now, not at first call: ``torch.compile`` cannot trace an
        import, and the Triton interpreter switch is read when kernels are defined."""
        if importlib.util.find_spec("triton") is None:
            self._load_error = "triton is not installed"
            return
        try:
            for op in OP_NAMES:
                module = importlib.import_module(f"fcos_fast.kernels.{_module_of(op)}")
                self._ops[op] = getattr(module, op)
            self._load_error = None
        except Exception as error:  # a broken triton install must not break the package
            self._ops.clear()
            self._load_error = f"the Triton kernels could not be loaded ({error!r})"

    def not_supported_reasons(self, op, device):
        reasons = []
        if self._load_error is not None:
            reasons.append(self._load_error)
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                reasons.append(
                    "Triton runs on CPU tensors only under the interpreter "
                    "(set TRITON_INTERPRET=1 before triton is imported)"
                )
        elif device.type != "cuda":
            reasons.append(f"Triton kernels need CUDA tensors, got device type {device.type!r}")
        return reasons

    def implementation(self, op):
        return self._ops[op]


BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (ReferenceBackend(), NativeBackend(), TritonBackend())
}

#: The names ``backend=`` (and ``$FCOS_FAST_BACKEND``, and ``model.backend``) accept.
BACKEND_NAMES = tuple(BACKENDS)


def load_implementations() -> None:
    """Resolve every backend's functions once, after the op modules are imported."""
    for backend in BACKENDS.values():
        backend.load()


def _module_of(op: str) -> str:
    """The file an op lives in: batched_nms shares nms's file in every tree."""
    return "nms" if op == "batched_nms" else op


def _requested_backend(backend: str | None) -> str | None:
    if backend is None:
        backend = os.environ.get(BACKEND_ENV_VAR) or None
    if backend is not None and backend not in BACKENDS:
        raise InputError(
            f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)} "
            f"(or leave backend=None and {BACKEND_ENV_VAR} unset for automatic selection)"
        )
    return backend


def select(op: str, device: torch.device, backend: str | None = None) -> Callable:
    """The implementation of ``op`` to run on ``device``.

    ``backend=None`` takes ``$FCOS_FAST_BACKEND`` if set, else the first backend of the
    automatic order that can run here. A backend named by either way must be able to
    run, or an ``InputError`` (a ``ValueError``) says why not.
    """
    requested = _requested_backend(backend)
    if requested is not None:
        reasons = BACKENDS[requested].not_supported_reasons(op, device)
        if reasons:
            raise InputError(
                f"backend {requested!r} cannot run fcos_fast.ops.{op} on {device.type}: "
                + "; ".join(reasons)
            )
        return BACKENDS[requested].implementation(op)
    for name in _AUTO_ORDER.get(device.type, ("reference",)):
        if not BACKENDS[name].not_supported_reasons(op, device):
            return BACKENDS[name].implementation(op)
    return BACKENDS["reference"].implementation(op)


def unsupported_reasons(backend: str, device: torch.device | str) -> list[str]:
    """Why ``backend`` cannot run every op on ``device`` (empty when it can)."""
    device = torch.device(device)
    reasons: list[str] = []
    for op in OP_NAMES:
        reasons += [r for r in BACKENDS[backend].not_supported_reasons(op, device)
                    if r not in reasons]
    return reasons


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """The backends this install can run on ``device`` (default: CPU), for every op.

    Example: ``ops.available_backends("cuda")`` -> ``["reference", "native", "triton"]``.
    """
    device = torch.device("cpu" if device is None else device)
    return [name for name in BACKENDS if not unsupported_reasons(name, device)]
