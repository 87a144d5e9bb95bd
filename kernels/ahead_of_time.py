"""Every launch the Triton launchers can make, compiled ahead of time with no GPU.

The interpreter ignores launch options, register allocation and fp contraction; a
compile for the real target does not: ``triton.compile`` with a ``GPUTarget`` needs no
driver, and Triton's bundled ``ptxas -v`` reports registers and spills. This module

1. finds the sizes at which each launcher's choice of configuration changes, by
   scanning its launch-configuration functions (the ones the launcher calls) over the
   op's size range: a case is each side of every boundary (``cases``);
2. runs the real launcher of each case on fake tensors (no memory, any size) with
   ``JITFunction.run`` replaced by a recorder, so what is compiled is exactly what the
   launch would compile: the same kernel, constexprs, options, and argument
   specialisation by Triton's own binder (``record_launches``). The fake tensors'
   shape environment refuses ``.item()``, so a case also proves its launcher traceable;
3. compiles each distinct launch for sm_80 and sm_90 to cubin and reads the registers,
   spills and stack of ``ptxas -v``, the shared memory Triton allocates, and the fp
   instructions of the PTX: fused multiply-adds and flush-to-zero (``compile_launch``).

``tests/ops/test_triton_compile.py`` asserts on the results; ``python -m
benchmarks.triton_launch_table`` writes them as a table. Kernels must be ``JITFunction``s,
so this runs where ``TRITON_INTERPRET`` is off: ``python -m fcos_fast.kernels.ahead_of_time
OUT.json`` (the tests run it so, in a subprocess, from an interpreted session). It uses
Triton internals (the binder, ``JITFunction._pack_args``) of the pinned Triton 3.8.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from fcos_fast.kernels import (batched_nms_padded, fcos_assign, giou_loss, nms, per_class_topk,
                               per_class_topk_padded, sigmoid_focal_loss)

ARCHS = (80, 90)
FLOAT_DTYPES = (torch.float32, torch.float64)
# The size ranges scanned for configuration boundaries: NMS from 1 to 300k boxes (a
# batch's candidates in one call), GIoU pairs past the largest block, up to 1024 box
# slots per image, top-k up to past the register list (4096) at FCOS's 20k points.
NMS_BOXES = 300_000
GIOU_PAIRS = 1 << 14
ASSIGN_SLOTS = 1024
TOPK_POINTS = 20_000
TOPK_MAX_K = 5000
# The sizes that do not drive a choice: FCOS-like, and not multiples of 16 (Triton
# specialises integer arguments on divisibility by 16; the driving sizes at both sides
# of a boundary cover both kinds).
ASSIGN_POINTS, ASSIGN_IMAGES = 17_821, 8
TOPK_CLASSES = 80
# The fixed-size ops: post-processing's 16 images x 80 classes as segments, segment lengths
# (slots) past the NMS sweep's last warp change.
PADDED_SEGMENTS = 16 * 80
PADDED_MAX_SLOTS = 40_000
# The focal loss: its configuration depends on the logits' dtype only (a fixed block), so
# one FCOS-like shape per dtype and launch kind; the logits' dtypes it reads as they are.
FOCAL_ROWS, FOCAL_CLASSES = 17_821, 80
FOCAL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Kernels that call libdevice's exp and log (the functions CUDA's expf/logf and exp/log
# are): those are fma polynomials; expf reduces its argument to an ex2.approx.ftz of
# [-1, 1] (scaling the result after, so subnormal results stay) and log(double) seeds a
# Newton iteration with rcp.approx.ftz.f64. Such a kernel promises tolerances, not bits; it
# still compiles with EXACT_FP (no contraction of its own arithmetic, no flush-to-zero
# elsewhere), so its checks allow fma and only libdevice's own .ftz opcodes (the control
# focal_default_fp_options shows what EXACT_FP removes from it).
LIBDEVICE_KERNELS = {"_sigmoid_focal_loss_kernel"}
LIBDEVICE_FTZ = {"ex2.approx.ftz.f32", "rcp.approx.ftz.f64"}


# ---------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One call of one launcher on fake inputs of the given sizes."""

    op: str
    dtype: torch.dtype
    sizes: tuple[tuple[str, int], ...]
    variant: str = ""  # e.g. the reduction, or "batched"
    run: Callable[[], Any] = field(compare=False, repr=False, default=None)

    @property
    def name(self) -> str:
        sizes = ",".join(f"{k}={v}" for k, v in self.sizes)
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.op}{variant}-{str(self.dtype).removeprefix('torch.')}-{sizes}"


def config_key(*configs) -> tuple:
    """What a launch compiles from a ``LaunchConfig``: everything but the grid."""
    return tuple((c.num_warps, c.max_registers, tuple(sorted(c.constexprs.items())))
                 for c in configs)


def boundaries(key: Callable[[int], Any], first: int, last: int) -> list[int]:
    """The sizes in ``[first, last]`` at either side of every change of ``key(size)``.

    ``key`` is sampled at every power of two and its neighbours and at 1024 evenly spaced
    sizes, and bisected between samples whose keys differ, so any boundary is found
    unless the key changes and changes back between two samples.
    """
    found = {first, last}

    def split(a, b, key_a, key_b):
        if b == a + 1:
            found.update((a, b))
            return
        middle = (a + b) // 2
        key_middle = key(middle)
        if key_middle != key_a:
            split(a, middle, key_a, key_middle)
        if key_middle != key_b:
            split(middle, b, key_middle, key_b)

    samples = {first, last} | set(range(first, last + 1, max(1, (last - first) // 1024)))
    power = 1
    while power <= 2 * last:
        samples.update(s for s in (power - 1, power, power + 1) if first <= s <= last)
        power *= 2
    samples = sorted(samples)
    keys = [key(size) for size in samples]
    for a, b, key_a, key_b in zip(samples, samples[1:], keys, keys[1:]):
        if key_a != key_b:
            split(a, b, key_a, key_b)
    return sorted(found)


def _fake(*shape, dtype):
    return torch.empty(shape, dtype=dtype)


def _nms_cases(sizes: Iterable[int] | None = None) -> list[Case]:
    cases = []
    for batched in (False, True):
        def key(n, batched=batched):
            return config_key(nms.mask_launch_config(n, batched),
                              nms.sweep_launch_config(n, batched))
        for dtype in FLOAT_DTYPES:
            for n in sizes or boundaries(key, 1, NMS_BOXES):
                def run(n=n, dtype=dtype, batched=batched):
                    idxs = _fake(n, dtype=torch.int64) if batched else None
                    nms.nms_launch(_fake(n, 4, dtype=dtype), _fake(n, dtype=dtype), idxs, 0.5)
                cases.append(Case("nms", dtype, (("N", n),), "batched" if batched else "",
                                  run))
    return cases


def _giou_cases(sizes: Iterable[int] | None = None) -> list[Case]:
    cases = []
    for dtype in FLOAT_DTYPES:
        def key(n, dtype=dtype):
            return config_key(giou_loss.forward_launch_config(n, dtype, "none"),
                              giou_loss.backward_launch_config(n, dtype, "none"))
        for reduction in ("none", "mean", "sum"):
            for n in sizes or boundaries(key, 1, GIOU_PAIRS):
                def run(n=n, dtype=dtype, reduction=reduction):
                    pred, target = _fake(n, 4, dtype=dtype), _fake(n, 4, dtype=dtype)
                    giou_loss.giou_loss_forward(pred, target, reduction, 1e-7)
                    grad = _fake(*((n,) if reduction == "none" else ()), dtype=dtype)
                    giou_loss.giou_loss_backward(grad, pred, target, reduction, 1e-7)
                cases.append(Case("giou_loss", dtype, (("N", n),), reduction, run))
    return cases


def _assign_cases(sizes: Iterable[int] | None = None) -> list[Case]:
    cases = []
    for dtype in FLOAT_DTYPES:
        def key(g, dtype=dtype):
            return config_key(fcos_assign.launch_config(ASSIGN_POINTS, ASSIGN_IMAGES, g, dtype))
        for g in sizes or boundaries(key, 1, ASSIGN_SLOTS):
            def run(g=g, dtype=dtype):
                p, b = ASSIGN_POINTS, ASSIGN_IMAGES
                fcos_assign.fcos_assign_launch(
                    _fake(p, 2, dtype=dtype), _fake(p, dtype=dtype), _fake(p, dtype=dtype),
                    _fake(p, dtype=dtype), _fake(b, g, 4, dtype=dtype),
                    _fake(b, dtype=torch.int64))
            cases.append(Case("fcos_assign", dtype, (("P", ASSIGN_POINTS), ("G", g)), "", run))
    return cases


def _topk_key(n: int, k: int):
    block = per_class_topk.list_block(n, k)
    if block is None:
        return None  # the sort path: no kernel
    return tuple(config_key(per_class_topk.segment_launch_config(n, TOPK_CLASSES, block, dtype),
                            per_class_topk.merge_launch_config(TOPK_CLASSES, block, dtype))
                 for dtype in FLOAT_DTYPES)


def _topk_cases(sizes: Iterable[tuple[int, int]] | None = None) -> list[Case]:
    if sizes is None:
        # k across the list lengths at FCOS's points; then few points (the list is at
        # least min(256, N)) at a small k.
        sizes = ([(TOPK_POINTS, k) for k in boundaries(lambda k: _topk_key(TOPK_POINTS, k),
                                                       1, TOPK_MAX_K)]
                 + [(n, 1) for n in boundaries(lambda n: _topk_key(n, 1), 1, 300)])
    cases = []
    for dtype in FLOAT_DTYPES:
        for n, k in sizes:
            if _topk_key(n, k) is None:
                continue
            def run(n=n, k=k, dtype=dtype):
                per_class_topk.per_class_topk_launch(_fake(n, TOPK_CLASSES, dtype=dtype), k, 0.05)
            cases.append(Case("per_class_topk", dtype, (("N", n), ("k", k)), "", run))
    return cases


def _padded_nms_cases(sizes: Iterable[int] | None = None) -> list[Case]:
    """batched_nms_padded launches nms's kernels; its choice depends on the slots L."""
    def key(length):
        return config_key(batched_nms_padded.mask_launch_config(PADDED_SEGMENTS, length),
                          batched_nms_padded.sweep_launch_config(PADDED_SEGMENTS, length))
    cases = []
    for categories in (False, True):
        for dtype in FLOAT_DTYPES:
            for length in sizes or boundaries(key, 1, PADDED_MAX_SLOTS):
                def run(length=length, dtype=dtype, categories=categories):
                    s = PADDED_SEGMENTS
                    idxs = _fake(s, length, dtype=torch.int64) if categories else None
                    batched_nms_padded.batched_nms_padded_launch(
                        _fake(s, length, 4, dtype=dtype), _fake(s, length, dtype=dtype),
                        _fake(s, dtype=torch.int64), 0.5, idxs)
                cases.append(Case("batched_nms_padded", dtype,
                                  (("S", PADDED_SEGMENTS), ("L", length)),
                                  "idxs" if categories else "", run))
    return cases


def _padded_topk_cases() -> list[Case]:
    """per_class_topk_padded launches per_class_topk's kernels with its configurations
    (covered by _topk_cases); post-processing's sizes prove its launcher."""
    cases = []
    for dtype in FLOAT_DTYPES:
        for n, k in ((TOPK_POINTS, 1000), (300, 1)):
            def run(n=n, k=k, dtype=dtype):
                per_class_topk_padded.per_class_topk_padded_launch(
                    _fake(n, PADDED_SEGMENTS, dtype=dtype), k, 0.05)
            cases.append(Case("per_class_topk_padded", dtype, (("N", n), ("k", k)), "", run))
    return cases


# The focal loss's launch kinds: the forward with the loss stored or summed, with and
# without the gradient of the reduced loss; the backward of "none" (an upstream gradient
# per element) and of "sum" (one for all).
FOCAL_VARIANTS = ("none", "none-grad", "sum", "mean-grad", "backward-none", "backward-sum")


def _focal_cases(shapes: Iterable[tuple[int, int]] | None = None) -> list[Case]:
    cases = []
    for dtype in FOCAL_DTYPES:
        compute = torch.promote_types(dtype, torch.float32)
        for rows, classes in shapes or [(FOCAL_ROWS, FOCAL_CLASSES)]:
            for weighted in (False, True):
                for variant in FOCAL_VARIANTS:
                    def run(rows=rows, classes=classes, dtype=dtype, weighted=weighted,
                            variant=variant):
                        logits = _fake(rows, classes, dtype=dtype)
                        labels = _fake(rows, dtype=torch.int64)
                        weight = _fake(rows, dtype=compute) if weighted else None
                        if variant.startswith("backward-"):
                            reduction = variant.removeprefix("backward-")
                            upstream = _fake(*((rows, classes) if reduction == "none" else ()),
                                             dtype=compute)
                            sigmoid_focal_loss.sigmoid_focal_loss_backward(
                                upstream, logits, labels, weight, 0.25, 2.0, reduction)
                        else:
                            sigmoid_focal_loss.sigmoid_focal_loss_forward(
                                logits, labels, weight, 0.25, 2.0, variant.split("-")[0],
                                variant.endswith("-grad"))
                    name = variant + ("-weight" if weighted else "")
                    cases.append(Case("sigmoid_focal_loss", dtype,
                                      (("N", rows), ("C", classes)), name, run))
    return cases


def cases() -> list[Case]:
    """One case per side of every boundary of every launcher's choice, per dtype."""
    return (_nms_cases() + _giou_cases() + _assign_cases() + _topk_cases()
            + _padded_nms_cases() + _padded_topk_cases() + _focal_cases())


def held_out_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` random sizes per op that ``cases`` does not pick."""
    import random

    rng = random.Random(seed)
    return (_nms_cases(sorted(rng.sample(range(2, NMS_BOXES), count)))
            + _giou_cases(sorted(rng.sample(range(2, GIOU_PAIRS), count)))
            + _assign_cases(sorted(rng.sample(range(2, ASSIGN_SLOTS), count)))
            + _topk_cases(sorted((rng.randrange(1, 100_000), rng.randrange(1, 4097))
                                 for _ in range(count)))
            + _focal_cases(sorted((rng.randrange(1, 50_000), rng.randrange(1, 1000))
                                  for _ in range(count))))


# Shared memory a program may use: sm_80 (A100) and sm_90 (H100) opt-in limits.
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def problems(launch: dict) -> list[str]:
    """What is wrong with a compiled launch: what the tests assert is not there."""
    found = []
    if launch["num_warps"] < 1 or launch["num_warps"] & (launch["num_warps"] - 1):
        found.append(f"{launch['num_warps']} warps, not a power of two")
    if launch["spill_stores"] or launch["spill_loads"] or launch["stack_bytes"]:
        found.append(f"spills ({launch['registers']} registers, {launch['spill_stores']} "
                     f"bytes of spill stores, {launch['stack_bytes']} bytes of stack)")
    fma, ftz = launch["fma"], launch["ftz"]
    if launch["kernel"] in LIBDEVICE_KERNELS:
        fma, ftz = 0, len(set(launch["ftz_ops"]) - LIBDEVICE_FTZ)
    if fma or ftz:
        found.append(f"{fma} fma and {ftz} .ftz instructions")
    if launch["shared_bytes"] > SHARED_LIMIT[launch["arch"]]:
        found.append(f"{launch['shared_bytes']} bytes of shared memory")
    return found


# ---------------------------------------------------------------- recording

def _kernel_name(kernel) -> str:
    return f"{kernel.fn.__module__}:{kernel.fn.__name__}"


def _load_kernel(name: str):
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


def _mock(value):
    """A recorded argument: tensors become Triton's MockTensor (a dtype, an aligned
    pointer, as every fresh torch allocation is); sizes must be plain ints."""
    from triton.runtime.jit import MockTensor

    if isinstance(value, torch.Tensor):
        return MockTensor(value.dtype)
    if isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool):
        raise TypeError(f"a launch argument is symbolic ({value}): launch sizes must be static")
    return value


@contextlib.contextmanager
def _recording(launches: list):
    from torch._library.triton import set_wrap_triton_enabled
    from triton import knobs
    from triton.runtime.jit import JITFunction

    def record(self, *args, grid, warmup, **kwargs):
        # As JITFunction.run sets them before compiling.
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        launches.append((self, tuple(_mock(a) for a in args),
                         {k: _mock(v) for k, v in kwargs.items()}))

    original = JITFunction.run
    JITFunction.run = record
    try:
        # Straight to the kernel, as in eager mode, not into the tracing HOP.
        with set_wrap_triton_enabled(False):
            yield
    finally:
        JITFunction.run = original


def record_launches(case: Case) -> list[tuple]:
    """The ``(kernel, args, kwargs)`` of every kernel launch of ``case``'s launcher."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    launches: list = []
    shape_env = ShapeEnv(allow_scalar_outputs=False, allow_dynamic_output_shape_ops=True)
    with FakeTensorMode(shape_env=shape_env), _recording(launches):
        case.run()
    return launches


def specialize(kernel, args, kwargs, capability: int) -> dict:
    """What Triton's JIT would compile for this launch on ``sm_<capability>``: signature,
    constexprs, attributes and options, by Triton's own binder."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", capability, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound_args, specialization, options)
    return {"kernel": _kernel_name(kernel), "capability": capability, "signature": signature,
            "constexprs": constexprs, "attrs": attrs, "options": dict(options.__dict__)}


def _job_key(job: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in job.items()))


# ---------------------------------------------------------------- compiling

_PTXAS_PATTERNS = {
    "registers": r"Used (\d+) registers",
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
}


def _ptxas_log(compiled, capability: int, options: dict) -> str:
    """``ptxas -v`` again, with Triton's flags, on the PTX Triton assembled the cubin from;
    kept beside the kernel in Triton's cache, so a warm run does not assemble again."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    name = f"{compiled.name}.ptxas-v.log"
    cached = cache.get_file(name)
    if cached is not None:
        with open(cached) as f:
            return f.read()
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(compiled.asm["ptx"])
        command = [get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
                   f"--gpu-name={sm_arch_from_capability(capability)}", source,
                   "-o", os.path.join(folder, "kernel.cubin")]
        if not options["enable_fp_fusion"]:
            command.insert(1, "--fmad=false")
        log = subprocess.run(command, check=True, capture_output=True, text=True).stderr
    cache.put(log, name, binary=False)
    return log


def compile_launch(job: dict) -> dict:
    """Compile one specialised launch to cubin; its resources and PTX fp instructions."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _load_kernel(job["kernel"])
    capability = job["capability"]
    options = job["options"]
    started = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=job["signature"], constexprs=job["constexprs"],
                  attrs=job["attrs"]),
        target=GPUTarget("cuda", capability, 32), options=options)
    seconds = time.perf_counter() - started
    ptx = compiled.asm["ptx"]
    log = _ptxas_log(compiled, capability, options)
    resources = {name: int(re.search(pattern, log).group(1))
                 for name, pattern in _PTXAS_PATTERNS.items()}
    # Opcodes, past any guard predicate (``@%p1 fma.rn.f32 ...``).
    instructions = [words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
                    for words in (line.split() for line in ptx.splitlines())
                    if words and not words[0].startswith(("//", ".", "$", "{", "}"))]
    return {
        **resources,
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "fma": sum(op.startswith("fma.") for op in instructions),
        "ftz": sum(".ftz" in op for op in instructions),
        "ftz_ops": sorted({op for op in instructions if ".ftz" in op}),
        "cubin_bytes": len(compiled.asm["cubin"]),
        "compile_seconds": round(seconds, 2),
    }


def _describe(job: dict) -> dict:
    """The launch in words: kernel, arch, pointer dtypes, constexprs, and how Triton
    specialised the integer arguments (1 becomes a constant, multiples of 16 are known)."""
    params = _load_kernel(job["kernel"]).params
    signature, constexprs = job["signature"], job["constexprs"]
    return {
        "kernel": job["kernel"].split(":")[1],
        "arch": f"sm_{job['capability']}",
        "dtypes": sorted({t.lstrip("*") for t in signature.values() if t.startswith("*fp")}),
        "constexprs": {params[path[0]].name: value for path, value in constexprs.items()
                       if params[path[0]].is_constexpr},
        "equal_to_1": sorted(params[path[0]].name for path in constexprs
                             if not params[path[0]].is_constexpr),
        "divisible_by_16": sorted(params[path[0]].name for path, attr in job["attrs"].items()
                                  if attr and not signature[params[path[0]].name].startswith("*")),
    }


# Launches the checks must reject: a case's launch with one setting changed. They show
# that each check can fail, and that the setting the launcher uses is what passes it.
CONTROLS = {
    # Triton's default fp options: fused multiply-adds, libdevice flushing to zero.
    "giou_backward_default_fp_options": (
        lambda: _giou_cases([1025])[0], "_giou_loss_backward_kernel",
        {"enable_fp_fusion": True, "enable_reflect_ftz": True}),
    # float64 fcos_assign with float32's 32-box chunk (issue 11: 564 bytes of spills).
    "fcos_assign_float64_block_g_32": (
        lambda: _assign_cases([32])[1], "_fcos_assign_kernel", {"BLOCK_G": 32}),
    # The sweep at 16 warps with 8 rows in flight: 128 registers at most (the limit a
    # LaunchConfig of 16 warps sets, 64K registers a block).
    "nms_sweep_16_warps": (
        lambda: _nms_cases([40_000])[0], "_nms_sweep_kernel",
        {"num_warps": 16, "CHUNK": 2048, "maxnreg": 128}),
    # The focal loss (its float32 forward with the gradient) with Triton's default fp
    # options: more fma than with EXACT_FP (its own arithmetic contracted), and .ftz.
    "focal_default_fp_options": (
        lambda: _focal_cases()[3], "_sigmoid_focal_loss_kernel",
        {"enable_fp_fusion": True, "enable_reflect_ftz": True}),
}


def _control_jobs() -> dict[str, dict]:
    jobs = {}
    for name, (make_case, kernel_name, change) in CONTROLS.items():
        for kernel, args, kwargs in record_launches(make_case()):
            if kernel.fn.__name__ == kernel_name:
                jobs[name] = specialize(kernel, args, {**kwargs, **change}, 90)
                break
        else:
            raise LookupError(f"control {name}: the case launches no {kernel_name}")
    return jobs


def _cost(job: dict) -> int:
    """A guess at the compile time, to start the slow compiles first: the largest block."""
    return max((v for v in job["constexprs"].values() if isinstance(v, int)), default=0)


def compile_cases(selected: list[Case], workers: int = 2) -> dict:
    """``{"cases": {name: [launch ids]}, "launches": {id: description and results},
    "controls": {name: results}}``."""
    jobs: dict[str, dict] = {}
    case_launches: dict[str, list[str]] = {}
    for case in selected:
        ids = []
        for kernel, args, kwargs in record_launches(case):
            for capability in ARCHS:
                job = specialize(kernel, args, kwargs, capability)
                key = _job_key(job)
                jobs.setdefault(key, job)
                ids.append(key)
        case_launches[case.name] = ids
    controls = _control_jobs()
    keys = sorted(jobs, key=lambda k: -_cost(jobs[k]))
    todo = list(controls.values()) + [jobs[k] for k in keys]
    if workers > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(compile_launch, todo))
    else:
        results = [compile_launch(job) for job in todo]
    control_results, results = results[:len(controls)], results[len(controls):]
    ids = {key: f"L{i}" for i, key in enumerate(keys)}
    return {
        "cases": {name: [ids[k] for k in launch_keys] for name, launch_keys in case_launches.items()},
        "launches": {ids[k]: {**_describe(jobs[k]), **result} for k, result in zip(keys, results)},
        "controls": {name: {**_describe(job), **result}
                     for (name, job), result in zip(controls.items(), control_results)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="JSON file to write")
    parser.add_argument("--held-out", type=int, default=0, metavar="COUNT",
                        help="compile COUNT random sizes per op instead of the boundaries")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    from fcos_fast.kernels._common import INTERPRET

    if INTERPRET:
        sys.exit("run with TRITON_INTERPRET=0: the kernels must be compiled, not interpreted")
    selected = held_out_cases(args.held_out) if args.held_out else cases()
    started = time.perf_counter()
    results = compile_cases(selected, args.workers)
    results["seconds"] = round(time.perf_counter() - started, 1)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
