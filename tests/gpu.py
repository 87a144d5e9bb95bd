"""The device of the ``cuda`` tests: a GPU where there is one, the CPU in the rehearsal.

A ``cuda`` test that takes the ``gpu`` fixture runs everywhere: on a GPU machine against
CUDA tensors, elsewhere its very body on CPU tensors (the C++ kernels, the Triton
kernels under the interpreter), so that no line of it runs for the first time on a GPU
(scripts/gpu_check.sh has minutes there). Sizes may shrink on the CPU (``size``). What
needs CUDA itself (sync debug mode, memory snapshots, graph capture) is a named no-op on
the CPU (``cuda_only``): the test records it as not rehearsed, and the session's summary
lists the names; on a GPU it always runs.
"""

from __future__ import annotations

import contextlib

import torch

#: user_properties key of the checks a rehearsal skipped.
NOT_REHEARSED = "not rehearsed"


class Gpu:
    """``device``: ``cuda`` on a GPU machine, else ``cpu`` (the rehearsal)."""

    def __init__(self, node) -> None:
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        self._node = node

    def __repr__(self) -> str:
        return f"Gpu({self.device.type})"

    def to(self, *tensors):
        """The tensors on the test's device (None stays None); one tensor alone unpacked."""
        moved = tuple(None if t is None else t.to(self.device) for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    def size(self, on_gpu, rehearsed):
        """``on_gpu`` on a GPU, ``rehearsed`` on the CPU (the interpreter is slow)."""
        return on_gpu if self.on_gpu else rehearsed

    def cuda_only(self, what: str) -> bool:
        """Whether to run a check that needs CUDA itself; on the CPU, records ``what`` as
        not rehearsed and says no."""
        if not self.on_gpu and (NOT_REHEARSED, what) not in self._node.user_properties:
            self._node.user_properties.append((NOT_REHEARSED, what))
        return self.on_gpu

    def synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def no_host_sync(self):
        """Any host-device synchronisation inside raises (CUDA's sync debug mode)."""
        if not self.cuda_only("sync debug mode"):
            yield
            return
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def allocations(self, fn):
        """``(result, peak extra bytes, sizes of every allocation)`` of a call of ``fn`` after
        a warm-up call; on the CPU ``(result, None, None)`` (no allocator snapshot)."""
        if not self.cuda_only("memory snapshot"):
            return fn(), None, None
        fn()
        torch.cuda.synchronize()
        torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
        try:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            result = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        trace = snapshot["device_traces"][torch.cuda.current_device()]
        return result, peak, [event["size"] for event in trace if event["action"] == "alloc"]
