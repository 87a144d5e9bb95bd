"""What the Triton kernels of fcos_fast share: exact float arithmetic and op registration.

Exactness. The backends must agree with the reference bit for bit where a comparison
decides the answer (an IoU against the NMS threshold, a match area against the best so
far), so the kernels round like PyTorch's elementwise kernels do:

* ``a / b`` on float32 in Triton is an approximate division (``div.full.f32``) on
  NVIDIA GPUs; ``div_rn`` below is the IEEE-rounded one that PyTorch computes.
* ``a * b + c`` may be contracted into one fused multiply-add, which rounds once
  instead of twice, and libdevice flushes float32 subnormals to zero by default. Every
  launch therefore compiles with ``EXACT_FP`` (``enable_fp_fusion=False``: LLVM emits
  ``mul.rn``/``add.rn``, which ptxas never fuses, and ptxas runs with ``--fmad=false``;
  ``enable_reflect_ftz=False``: libdevice keeps subnormals). ``mul_rn`` below is, in
  addition, a product that is never fused whatever the options (libdevice's
  ``__nv_fmul_rn`` / ``__nv_dmul_rn``). The interpreter computes with NumPy, which never
  fuses and keeps subnormals, and has no libdevice, so there it is a plain product. The
  ahead-of-time compile test (``tests/ops/test_triton_compile.py``) checks the PTX of
  every launch for ``fma`` and ``.ftz``.

Scalars. A float argument reaches a compiled kernel as float32 but stays a Python float
(float64) in the interpreter, and PyTorch compares a float32 tensor with a Python float
threshold in float32 but a float64 tensor in float64. The launchers therefore hand
float scalars (thresholds, eps) to the kernels as a one-element tensor of the computing
dtype (``scalar_tensor``): one rounding rule, the same on every device, and still no
host-device synchronisation (a fill kernel, not a copy).

Launch configuration. Each kernel's choice of grid, warps and compile-time constants is
one function of the input sizes returning a ``LaunchConfig``, which the launcher and the
ahead-of-time compile test both call. Launchers run on their tensors' device
(``device_guard``), as the native ops do with a ``CUDAGuard``.

Registration. Every op is a ``torch.library.triton_op`` whose fake implementation is
the one shared by all backends (``fcos_fast.ops.<op>``); ``register`` installs it.

Memory safety. No address depends on a value read from an input: NaN, inf or garbage
coordinates give garbage answers, never an out-of-bounds access or an endless loop.
(NMS addresses its mask through segment tables that its launcher computes from the
sorted categories; they are in range whatever the categories and scores are.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# Fixed when this module is imported, exactly as @triton.jit decides between compiling
# and interpreting a kernel.
INTERPRET = triton.knobs.runtime.interpret
_INTERPRET = tl.constexpr(INTERPRET)

# torch.minimum/maximum/clamp propagate NaN; tl.minimum/maximum by default return the
# other operand (fmin/fmax). Every min/max of coordinates passes this, so that a NaN
# coordinate gives the reference's answer (matches nothing, suppresses nothing).
NAN = tl.constexpr(tl.PropagateNan.ALL)


@triton.jit
def mul_rn(a, b):
    """``a * b`` rounded to nearest and never fused into an FMA with a following add."""
    if _INTERPRET:
        return a * b
    else:
        return libdevice.mul_rn(a, b)


@triton.jit
def div_rn(a, b):
    """``a / b`` rounded to nearest (float64 division already is; ``tl.math.div_rn`` only
    takes float32)."""
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def load_boxes(ptr, rows, mask):
    """Columns ``x1, y1, x2, y2`` of the given rows of a contiguous ``[N, 4]`` tensor,
    loaded as one ``[BLOCK, 4]`` tile (16- or 32-byte rows) and split in registers."""
    tile = tl.load(ptr + 4 * rows[:, None] + tl.arange(0, 4)[None, :], mask=mask[:, None],
                   other=0.0)
    xs, ys = tl.split(tl.reshape(tile, [tile.shape[0], 2, 2]))  # (x1, x2), (y1, y2)
    x1, x2 = tl.split(xs)
    y1, y2 = tl.split(ys)
    return x1, y1, x2, y2


# Compile options of every launch: no contraction into FMAs, no flush-to-zero (see above).
EXACT_FP = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


class LaunchConfig(NamedTuple):
    """How one kernel is launched: ``wrap_triton(kernel)[config.grid](*args, **config.kwargs)``."""

    grid: tuple[int, ...]
    num_warps: int
    constexprs: dict[str, Any]
    #: ``maxnreg``: registers a thread may use, where ptxas's own choice spills. (For a
    #: block of few threads ptxas stops at 128 to keep occupancy; some Triton versions'
    #: code then spills, which a latency-bound kernel pays for more than occupancy.)
    max_registers: int | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """The launch's keyword arguments: the constexprs, the warps, the register limit
        (never more than a block of this many warps can have: 64K registers a block on
        sm_80 and sm_90, or the launch would fail) and ``EXACT_FP``."""
        limit = {}
        if self.max_registers is not None:
            limit["maxnreg"] = min(self.max_registers, 65536 // (32 * self.num_warps))
        return {**self.constexprs, "num_warps": self.num_warps, **limit, **EXACT_FP}


#: CUDA's grid limits: programs along axis 0, 1 and 2.
GRID_LIMITS = (2**31 - 1, 65_535, 65_535)


def checked_grid(grid: tuple[int, ...], op: str, sizes: str) -> tuple[int, ...]:
    """``grid`` if CUDA can launch it, else an ``InputError`` naming the op and the input
    ``sizes`` that asked for it (the native backend loops where a kernel here cannot)."""
    for axis, (programs, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if programs > limit:
            from fcos_fast.ops import InputError

            raise InputError(f"{op} on the triton backend: {sizes} need {programs} programs "
                             f"along grid axis {axis}, more than CUDA's {limit}; use "
                             f"backend='native'")
    return grid


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s CUDA device the current one while kernels launch (Triton launches
    on the current device, whatever the tensors'); nothing for CPU tensors (interpreter)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The launchers' inputs in the layout the kernels index (row-major, no gaps): the
    public ops hand them over so, a direct ``torch.ops.fcos_fast.<op>_triton`` call may
    not (a copy then, as the native ops make; free when already contiguous)."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def scalar_tensor(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a one-element tensor of ``like``'s dtype and device (see above)."""
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def descending_score_order(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch.argsort(scores, dim, descending=True, stable=True)`` as the CPU computes it
    on every device: every NaN first, whatever its sign bit.

    torch.sort on CPU compares with ``isnan`` and puts all NaNs first; on CUDA it is a radix
    sort of the bit patterns, which ranks a NaN with the sign bit set below -inf. Making
    every NaN positive first gives the CPU's order there too (the native kernels use the
    keys of ``csrc/ops/score_key.h``, which map every NaN to the first key).
    """
    positive_nan = torch.where(torch.isnan(scores), scores.abs(), scores)
    return torch.argsort(positive_nan, dim=dim, descending=True, stable=True)


def empty_of_device_size(size: torch.Tensor) -> torch.Tensor:
    """An uninitialised int64 ``[int(size)]`` tensor, ``size`` a one-element int64 tensor on
    the device: one host-device synchronisation, reading the size.

    While tracing (fake tensors refuse ``.item()``) the size is data-dependent instead,
    from ``torch.repeat_interleave`` (whose fake gives a new dynamic size, as
    ``nonzero``'s does). In eager mode that op would synchronise twice (its output size,
    then a check that no repeat is negative), hence ``.item()`` there.
    """
    if isinstance(size, torch._subclasses.FakeTensor) or torch._guards.detect_fake_mode():
        return torch.repeat_interleave(size.reshape(1))
    return torch.empty((int(size.item()),), dtype=torch.int64, device=size.device)


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``, or under the interpreter the kernel itself.

    ``wrap_triton`` makes a launch traceable for ``triton_op``; an interpreted kernel
    cannot be traced anyway (``register`` keeps the op opaque there) and launches
    eagerly as it is. torch 2.14 hands an interpreted kernel back unchanged, torch 2.11
    refuses it ("wrap_triton only works on functions annotated with triton.jit"), so
    the supported range needs this one rule. The name stays ``wrap_triton``:
    ``triton_op`` finds a launcher's kernels by the calls of that name in its source.
    """
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _keep_opaque(mode, op, types, args, kwargs):
    """Under FunctionalTensorMode, run the op as a whole instead of decomposing it."""
    return mode.__torch_dispatch__(op, types, args, kwargs)


def register(op, fake: Callable) -> None:
    """Give the triton_op ``op`` the fake implementation shared by every backend.

    ``triton_op`` registers the launcher itself as the fake, which works when the
    launcher is traceable and its output sizes follow from the input sizes. The shared
    fake is used instead because (1) NMS and per-class top-k have data-dependent output
    sizes, which only ``get_ctx().new_dynamic_size()`` can express, and (2) under
    ``TRITON_INTERPRET=1`` ``wrap_triton`` hands back the interpreted kernel itself,
    which cannot run on fake tensors.

    For the same reason (2), the interpreter keeps the op opaque under
    ``torch.compile`` (AOTAutograd would otherwise trace into the launcher and run the
    interpreted kernels on fake tensors): Inductor then calls the op as an extern kernel,
    which is how the compile tests run on machines without a GPU. With a GPU, the op is
    decomposed as ``triton_op`` intends and Inductor sees the kernels.
    """
    op.register_fake(fake)
    if INTERPRET:
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
