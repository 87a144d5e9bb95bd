"""The backend × device matrix of the op tests, and the shared input generators."""

from __future__ import annotations

import pytest
import torch

from benchmarks.cases import clustered_boxes, fcos_points, padded_gt, random_boxes  # noqa: F401
from fcos_fast import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_matrix(include_reference: bool = True):
    """``pytest.param(backend, device)`` for every backend this install runs, per device."""
    params = []
    for device in DEVICES:
        for backend in ops.available_backends(device):
            if backend == "reference" and not include_reference:
                continue
            marks = [pytest.mark.cuda] if device == "cuda" else []
            params.append(pytest.param(backend, device, marks=marks, id=f"{backend}-{device}"))
    return params


def why_not(backend: str, device: str) -> str:
    """Why ``backend`` cannot run on ``device``, in its own words (for skip reasons)."""
    from fcos_fast.ops._dispatch import BACKENDS, OP_NAMES

    reasons = sorted({reason for op in OP_NAMES
                      for reason in BACKENDS[backend].not_supported_reasons(
                          op, torch.device(device))})
    return "; ".join(reasons) or f"{backend} runs on {device}"


def interpreted(backend: str, device: str) -> bool:
    """Triton on CPU runs in the (slow) interpreter: such cases are kept small."""
    return backend == "triton" and device == "cpu"
