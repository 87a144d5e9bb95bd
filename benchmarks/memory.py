"""Peak extra memory of a call, on CUDA and on CPU.

CUDA: the caching allocator's peak statistics. CPU: the process's resident-set
high-water mark (VmHWM), reset through /proc/self/clear_refs before the call. Large
tensors are mmap-ed by the allocator and returned on free, so the high-water mark
minus the resident size before the call is the call's peak extra footprint (to a page
or so of noise from everything else the process does). glibc would otherwise raise its
mmap threshold after the first large free and serve later tensors from an already
resident heap, hiding them, so the threshold is pinned low first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Callable

import torch


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


@functools.cache
def _libc():
    libc_name = ctypes.util.find_library("c")
    return ctypes.CDLL(libc_name) if libc_name else None


@functools.cache
def _pin_mmap_threshold() -> None:
    """Serve every allocation of 64 KiB or more by mmap, returned to the OS on free."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 64 * 1024)


def _release_free_heap() -> None:
    """Give the heap's free pages back, so that reusing them shows in the resident size."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def cpu_peak_supported() -> bool:
    _pin_mmap_threshold()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _read_status_kib("VmHWM")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Bytes by which memory in use rose at the peak of ``fn()`` (its result included)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return max(peak - before, 0)
    _pin_mmap_threshold()
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    before = _read_status_kib("VmRSS")
    result = fn()
    peak = _read_status_kib("VmHWM")
    del result
    return max(peak - before, 0) * 1024
