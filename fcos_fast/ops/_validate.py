"""Input checks at the Python boundary of every op.

A wrong shape, dtype or device mix raises ``InputError`` naming the argument: a
``ValueError`` that is also a ``RuntimeError``, so that code written against
torchvision (whose C++ checks raise ``RuntimeError``, its Python ones ``ValueError``)
catches ours unchanged. Checks
on metadata are free; the check that box coordinates are finite costs a reduction and,
on GPU, a device sync, so ``FCOS_FAST_VALIDATE=0`` turns off the checks on values (the
kernels stay memory-safe on NaN/inf input regardless). Value checks are also skipped
while ``torch.compile`` traces, where a data-dependent branch would break the graph.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch

VALIDATE_ENV_VAR = "FCOS_FAST_VALIDATE"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class InputError(ValueError, RuntimeError):
    """An op was called with arguments it cannot run on (the message names the argument).

    Both a ``ValueError`` (the project's contract) and a ``RuntimeError`` (what
    torchvision's C++ argument checks raise), so either ``except`` catches it.
    """


InputError.__module__ = "fcos_fast.ops"  # where users import it from; tracebacks say so


def values_checked() -> bool:
    """Whether value checks (finiteness, index ranges) run for this call."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get(VALIDATE_ENV_VAR, "1") != "0"


def tensor(name: str, value, *, dims: int | None = None, last: int | None = None,
           floating: bool = False, integer: bool = False) -> torch.Tensor:
    """Check that ``value`` is a tensor of ``dims`` dimensions with last size ``last``."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        shape = "[" + ", ".join(["N"] * (dims - 1) + [str(last) if last else "N"]) + "]"
        raise InputError(
            f"{name} must have {dims} dimension{'s' if dims != 1 else ''} "
            f"(shape {shape}), got shape {list(value.shape)}"
        )
    if last is not None and (value.dim() == 0 or value.shape[-1] != last):
        raise InputError(f"{name} must have last dimension {last}, got shape {list(value.shape)}")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}"
        )
    if integer and (value.dtype.is_floating_point or value.dtype.is_complex
                    or value.dtype == torch.bool):
        raise InputError(f"{name} must be an integer tensor, got {value.dtype}")
    return value


def same_device(**tensors: torch.Tensor) -> torch.device:
    """Check that all tensors are on one device and return it."""
    names = list(tensors)
    first = tensors[names[0]].device
    for name in names[1:]:
        if tensors[name].device != first:
            raise InputError(
                f"{name} is on {tensors[name].device} but {names[0]} is on {first}; "
                "all inputs must be on the same device"
            )
    return first


def same_length(dim: int = 0, **tensors: torch.Tensor) -> int:
    """Check that all tensors have the same size along ``dim`` and return it."""
    names = list(tensors)
    size = tensors[names[0]].shape[dim]
    for name in names[1:]:
        if tensors[name].shape[dim] != size:
            raise InputError(
                f"{name} has {tensors[name].shape[dim]} rows but {names[0]} has {size}; "
                f"they must match (shapes {list(tensors[names[0]].shape)} and "
                f"{list(tensors[name].shape)})"
            )
    return size


def has_values(value: torch.Tensor) -> bool:
    """Whether to look at the values: checks on, something there, not a meta/fake tensor."""
    return values_checked() and value.numel() > 0 and not value.is_meta


def finite(name: str, value: torch.Tensor) -> None:
    """Reject NaN/inf coordinates (skipped when value checks are off)."""
    if has_values(value) and not bool(torch.isfinite(value).all()):
        raise InputError(
            f"{name} contains NaN or infinite values; boxes and points must be finite "
            f"(set {VALIDATE_ENV_VAR}=0 to skip this check in trusted hot loops)"
        )


def not_nan(name: str, value: torch.Tensor) -> None:
    """Reject NaN (infinities allowed, e.g. an unbounded scale range)."""
    if has_values(value) and bool(torch.isnan(value).any()):
        raise InputError(f"{name} contains NaN values")


def number(name: str, value, *, integer: bool = False, minimum: float | None = None) -> None:
    """Check a Python scalar argument."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(
            f"{name} must be {'an int' if integer else 'a real number'}, "
            f"got {type(value).__name__}"
        )
    if not integer and math.isnan(value):
        raise InputError(f"{name} must not be NaN")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


@functools.lru_cache(maxsize=None)
def _promote(first: torch.dtype, second: torch.dtype) -> torch.dtype:
    # Cached: ``torch.promote_types`` is a dispatched operator, and the ops' argument
    # handling should dispatch nothing (the operator counts of the losses and the
    # post-processing, tests/model/test_operator_counts.py).
    return torch.promote_types(first, second)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the op computes in: the promoted input dtype, at least float32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = _promote(dtype, t.dtype)
    return _promote(dtype, torch.float32)


def as_dtype(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value.to(dtype).contiguous()``, without dispatching the two no-op operators
    when ``value`` already is a contiguous ``dtype`` tensor (the common case)."""
    if value.dtype == dtype and value.is_contiguous():
        return value
    return value.to(dtype).contiguous()
