"""Training precision: which autocast dtype (if any) and whether a gradient scaler runs.

``solver.amp`` names the choice:

* ``auto`` (the default): bfloat16 autocast where the hardware executes bfloat16
  natively — a CPU with AVX512-BF16 or AMX (read from the CPU's feature flags, never
  guessed from its name), a CUDA device with bfloat16 arithmetic (Ampere and newer) —,
  float16 autocast with a gradient scaler on CUDA devices without it, float32 otherwise.
* ``bf16``, ``fp16``, ``fp32``: that one, whatever the hardware (bfloat16 on a CPU without
  native support is emulated and slow; float16 always runs with the gradient scaler).

Autocast covers the network only: the model computes its losses, target assignment and
post-processing in float32 (``FCOS`` leaves autocast for them), and the optimizer keeps
float32 weights.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from fcos_fast.config import PRECISION_CHOICES

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device.

    Attributes:
        name: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        device_type: ``"cpu"``, ``"cuda"``, ...
        reason: why ``auto`` chose it (or that it was forced), for the log.
    """

    name: str
    device_type: str
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for float32 (no autocast)."""
        return _DTYPES[self.name]

    @property
    def uses_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the forward pass (a no-op for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_grad_scaler)


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bfloat16 arithmetic in hardware (AVX512-BF16 or AMX).

    PyTorch reads the CPU's feature flags (cpuinfo) for its own kernel dispatch; this asks
    the same source, so the answer is what oneDNN will actually use.
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when the CUDA device computes in bfloat16 natively (compute capability >= 8.0)."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(setting: str, device: torch.device | str) -> Precision:
    """The precision ``solver.amp = setting`` selects on ``device``.

    Raises:
        ValueError: ``setting`` is not one of ``PRECISION_CHOICES``.
    """
    device = torch.device(device)
    if setting not in PRECISION_CHOICES:
        raise ValueError(f"solver.amp must be one of {', '.join(PRECISION_CHOICES)}, "
                         f"got {setting!r}")
    if setting != "auto":
        return Precision(setting, device.type, "set by solver.amp")
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return Precision("bf16", "cpu", "the CPU executes bfloat16 natively (AVX512-BF16/AMX)")
        return Precision("fp32", "cpu", "the CPU has no native bfloat16 (no AVX512-BF16 or AMX)")
    if device.type == "cuda":
        if cuda_has_native_bf16(device):
            return Precision("bf16", "cuda", "the GPU computes in bfloat16 natively")
        return Precision("fp16", "cuda", "the GPU has no native bfloat16: float16 with "
                                         "gradient scaling")
    return Precision("fp32", device.type, f"no mixed precision chosen for {device.type}")


def use_channels_last(setting: bool | None, device: torch.device | str) -> bool:
    """Whether to train the backbone (ResNet + FPN) in channels-last memory format
    (``solver.channels_last``).

    ``None`` (automatic) turns it on for CPU training, where oneDNN's channels-last
    convolutions measured faster in float32 and bfloat16, and leaves it off elsewhere until
    measured there. The head stays in the default format: its bfloat16 GroupNorm has no
    fast channels-last kernel on the CPU (8x slower than contiguous, measured), so the
    head makes its inputs contiguous (``FCOSHead.forward``).
    """
    if setting is not None:
        return setting
    return torch.device(device).type == "cpu"
