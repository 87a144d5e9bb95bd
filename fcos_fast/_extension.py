"""Loads the compiled extension ``fcos_fast._C`` if it was built.

Importing it registers the ``fcos_fast::*`` operator schemas and their CPU (and, when
built with CUDA, CUDA) kernels with the PyTorch dispatcher. The package stays usable
without it: the ``reference`` backend needs nothing compiled.
"""

from __future__ import annotations

import importlib
import warnings

import torch

NATIVE_AVAILABLE = False
NATIVE_ERROR: str | None = None

try:
    importlib.import_module("fcos_fast._C")  # importing registers the ops

    NATIVE_AVAILABLE = True
except ImportError as error:  # not built, or built against another torch
    NATIVE_ERROR = f"the compiled extension fcos_fast._C could not be loaded ({error})"
    warnings.warn(
        f"fcos_fast: {NATIVE_ERROR}; only the 'reference' and 'triton' backends are "
        "available. Rebuild with `pip install -e . --no-build-isolation`.",
        stacklevel=2,
    )


def native_has_kernel(op_name: str, device_type: str) -> bool:
    """Whether ``fcos_fast::<op_name>`` has a kernel for ``device_type`` in this build."""
    if not NATIVE_AVAILABLE:
        return False
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if dispatch_key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fcos_fast::{op_name}", dispatch_key)
