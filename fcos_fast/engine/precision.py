"""Precision of training and inference: which autocast dtype (if any), whether a gradient
scaler runs, and the backbone's memory format at inference.

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

Inference follows the same rule (``inference_precision``): ``python -m
fcos_fast.evaluate``, ``infer`` and ``export`` take ``--precision`` (``auto`` by default,
resolved as above), the evaluation inside training runs at the training precision, and
the backbone runs channels-last on the CPU under bfloat16 (``inference_channels_last``).
A forced value the device does not execute natively is refused there, since it would be
slower than float32 and less exact: float16 on a CPU (fcos_fast's float16 is for GPUs; on
CPUs bfloat16 is the native half precision), bfloat16 on a CPU without
AVX512-BF16/AMX or a GPU without bfloat16 arithmetic. On such a device ``auto`` is
float32 and contiguous: inference is exactly what it was before precision was chosen.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from fcos_fast.config import PRECISION_CHOICES, ConfigError

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device.

    Attributes:
        name: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        device_type: ``"cpu"``, ``"cuda"``, ...
        reason: why ``auto`` chose it (or that it was forced), for the log; not part of
            equality.
    """

    name: str
    device_type: str
    reason: str = field(default="", compare=False)

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


def autocast(precision: Precision | None) -> contextlib.AbstractContextManager:
    """``precision.autocast()``; no autocast (float32) for None."""
    return precision.autocast() if precision is not None else contextlib.nullcontext()


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


def resolve_precision(setting: str, device: torch.device | str, *,
                      option: str = "solver.amp") -> Precision:
    """The precision ``solver.amp = setting`` selects on ``device``.

    ``option`` names the setting in messages (``--precision`` for the inference commands).

    Raises:
        ValueError: ``setting`` is not one of ``PRECISION_CHOICES``.
    """
    device = torch.device(device)
    if setting not in PRECISION_CHOICES:
        raise ValueError(f"{option} must be one of {', '.join(PRECISION_CHOICES)}, "
                         f"got {setting!r}")
    if setting != "auto":
        return Precision(setting, device.type, f"set by {option}")
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


def inference_precision(setting: str, device: torch.device | str) -> Precision:
    """The precision of ``--precision setting`` for inference on ``device`` (``evaluate``,
    ``infer``, ``export``): ``auto`` as ``resolve_precision`` resolves it for training.

    A forced value the device does not execute natively is a user mistake here, not
    something to emulate: it would be slower than float32 and less exact.

    Raises:
        ConfigError: ``setting`` is not one of ``PRECISION_CHOICES``; ``fp16`` on a CPU;
            ``bf16`` on a CPU without AVX512-BF16/AMX or on a GPU of compute capability
            below 8.0.
    """
    device = torch.device(device)
    try:
        precision = resolve_precision(setting, device, option="--precision")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if precision.name == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is for GPUs: on the CPU use bf16 (where the CPU "
                          "executes it natively: AVX512-BF16 or AMX) or fp32; auto picks")
    if precision.name == "bf16":  # auto chooses it only where it is native
        if device.type == "cpu" and not cpu_has_native_bf16():
            raise ConfigError("--precision bf16: this CPU has no native bfloat16 "
                              "(AVX512-BF16 or AMX), so it would be emulated, slower than "
                              "float32; use --precision fp32 (auto picks it here)")
        if device.type == "cuda" and not cuda_has_native_bf16(device):
            major, minor = torch.cuda.get_device_capability(device)
            raise ConfigError(f"--precision bf16: the GPU (compute capability {major}.{minor}) "
                              f"has no bfloat16 arithmetic; use --precision fp16 (auto picks "
                              f"it here) or fp32")
    return precision


def inference_channels_last(precision: Precision, setting: bool | None = None) -> bool:
    """Whether inference runs the backbone channels-last (``solver.channels_last`` as
    ``setting``; None: automatic).

    Automatic: on the CPU under mixed precision only. There oneDNN's bfloat16
    convolutions are fastest channels-last (the ``voc_r18`` network, 8 images at 512 px
    on a 2-core AMX Xeon: 551 ms against 1,122 ms contiguous, issue 21); float32
    inference stays contiguous, exactly as it was before precision was chosen. The head
    takes contiguous features either way (``FCOSHead.forward``).
    """
    if setting is not None:
        return setting
    return precision.dtype is not None and use_channels_last(None, precision.device_type)


def set_inference_memory_format(model: nn.Module, precision: Precision,
                                setting: bool | None = None) -> bool:
    """Put ``model``'s backbone in the memory format ``inference_channels_last`` chooses
    (channels-last or contiguous), in place; returns whether it is channels-last.

    For a model the caller owns: the format only changes speed (results differ by float
    rounding), but a model shared with training should not be switched under it (the
    training loop evaluates its model as it is).
    """
    channels_last = inference_channels_last(precision, setting)
    model.backbone.to(memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format)
    return channels_last


def describe(precision: Precision, channels_last: bool | None = None) -> str:
    """``"bf16 (why), backbone channels-last"``: the line the commands print and log."""
    text = f"{precision.name} ({precision.reason})" if precision.reason else precision.name
    if channels_last is not None:
        text += f", backbone {'channels-last' if channels_last else 'contiguous'}"
    return text
