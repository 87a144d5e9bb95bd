"""pytest fixtures of the benchmark suites: the device, the backends and the results."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import Results, bench_device, rehearsing, run_benchmark
from benchmarks.memory import cpu_peak_supported, peak_extra_bytes
from fcos_fast import ops

_RESULTS = Results()
# Peak-memory measurements wait until every timing is done: measuring CPU memory pins
# glibc's mmap threshold for the rest of the process, which would slow the allocations
# of every later timed call.
_PENDING_MEMORY: list[tuple[dict, object]] = []


def compiled_backends(device: torch.device) -> list[str]:
    """Backends worth timing: never the Triton interpreter."""
    backends = ops.available_backends(device)
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]
    return backends


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


@pytest.fixture
def measure(benchmark, device):
    """``measure(op=..., backend=..., mode=..., size=..., fn=...)`` times ``fn``, measures
    its peak extra memory, and records both rows."""

    def _measure(*, op: str, backend: str, mode: str, size: str, fn, memory: bool = True):
        benchmark.group = f"{op} {mode} {size}"
        benchmark.extra_info.update(op=op, backend=backend, mode=mode, size=size)
        median, q20, q80 = run_benchmark(benchmark, fn, device)
        _RESULTS.add(op=op, backend=backend, mode=mode, metric="time", unit="ms", size=size,
                     median=median, q20=q20, q80=q80, device=device)
        if memory:
            _PENDING_MEMORY.append((dict(op=op, backend=backend, mode=mode, size=size,
                                         device=device), fn))
        return median

    return _measure


def _measure_pending_memory() -> None:
    for key, fn in _PENDING_MEMORY:
        device = key["device"]
        if device.type == "cpu" and not cpu_peak_supported():
            continue
        peak = min(peak_extra_bytes(fn, device) for _ in range(2)) / 2**20
        _RESULTS.add(metric="peak_memory", unit="MB", median=peak, **key)
    _PENDING_MEMORY.clear()


def pytest_collection_modifyitems(config, items):
    """Rehearsing, each benchmark function runs at its first parameters only."""
    if not rehearsing():
        return
    seen, kept = set(), []
    for item in items:
        function = (item.module.__name__, item.originalname)
        if function not in seen:
            seen.add(function)
            kept.append(item)
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    _measure_pending_memory()
    if _RESULTS.rows:
        for path in _RESULTS.save():
            print(f"\nbenchmark rows appended to {path}")
