"""Every Triton launch the launchers can make, compiled for sm_80 and sm_90, no GPU needed.

The interpreter ignores launch options, register allocation and fp contraction, so it
cannot see a launch that crashes on a GPU (a non-power-of-two warp count), spills
registers, or loses the bitwise agreement the kernels promise to fused multiply-adds or
flush-to-zero. ``fcos_fast.kernels.ahead_of_time`` runs every launcher, on fake tensors,
at both sides of every boundary of its launch-configuration choice, records the
launches, and compiles each with Triton for the two targets (its docstring says how).
It needs the kernels compiled, not interpreted, so one subprocess does it for the whole
session, with Triton's compile cache: minutes the first time on two cores, seconds
after. The table of what it finds is ``benchmarks/results/triton_launch_configs.md``
(``python -m benchmarks.triton_launch_table``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from fcos_fast.kernels import (ahead_of_time, fcos_assign, giou_loss, nms,  # noqa: E402
                               per_class_topk, sigmoid_focal_loss)

CASES = ahead_of_time.cases()
# The first test waits for the session's compile of every launch: minutes when Triton's
# cache is cold on two busy cores (26 measured under load), seconds after.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("triton_compile") / "launches.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile the kernels, do not interpret
    done = subprocess.run([sys.executable, "-m", "fcos_fast.kernels.ahead_of_time", str(output)],
                          env=env, capture_output=True, text=True, timeout=3500)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(output.read_text())


def _launches(compiled: dict, case) -> list[dict]:
    launches = [compiled["launches"][i] for i in compiled["cases"][case.name]]
    assert launches, f"{case.name} launched no kernel"
    return launches


def _where(launch: dict) -> str:
    return f"{launch['kernel']} {launch['arch']} {launch['dtypes']} {launch['constexprs']}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_launch_compiles_for_every_arch(compiled, case):
    launches = _launches(compiled, case)
    for kernel in {launch["kernel"] for launch in launches}:
        archs = {launch["arch"] for launch in launches if launch["kernel"] == kernel}
        assert archs == {"sm_80", "sm_90"}, kernel
    for launch in launches:
        assert launch["cubin_bytes"] > 0, _where(launch)
        assert launch["shared_bytes"] <= ahead_of_time.SHARED_LIMIT[launch["arch"]], _where(launch)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_warps_are_a_power_of_two(compiled, case):
    for launch in _launches(compiled, case):
        warps = launch["num_warps"]
        assert warps >= 1 and warps & (warps - 1) == 0, _where(launch)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_no_register_spills(compiled, case):
    """No spill and no stack frame: float32 and (so far) float64 alike."""
    for launch in _launches(compiled, case):
        assert (launch["spill_stores"], launch["spill_loads"], launch["stack_bytes"]) == (0, 0, 0), (
            f"{_where(launch)}: {launch['registers']} registers, "
            f"{launch['spill_stores']} bytes of spill stores")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_no_fused_multiply_add_or_flush_to_zero(compiled, case):
    """Every kernel promises the reference's bits where they decide or are the answer
    (IoU against the threshold, match areas, the GIoU loss and its gradient). The kernels
    calling libdevice's exp and log (the focal loss, which promises tolerances) hold its
    fma and its one .ftz opcode, and no other."""
    for launch in _launches(compiled, case):
        if launch["kernel"] in ahead_of_time.LIBDEVICE_KERNELS:
            assert set(launch["ftz_ops"]) <= ahead_of_time.LIBDEVICE_FTZ, _where(launch)
        else:
            assert (launch["fma"], launch["ftz"]) == (0, 0), _where(launch)


def test_the_checks_reject_their_controls(compiled):
    """Each check fails on a launch made the way it guards against, so it can fail."""
    controls = compiled["controls"]
    fp = controls["giou_backward_default_fp_options"]
    assert fp["fma"] > 0 and fp["ftz"] > 0  # what EXACT_FP removes
    # The focal loss with Triton's defaults: its own arithmetic contracted (more fma than
    # the EXACT_FP launch of the same case, which holds libdevice's only) and flushed.
    focal = controls["focal_default_fp_options"]
    exact = [launch for launch in _launches(compiled, ahead_of_time._focal_cases()[3])
             if launch["kernel"] == focal["kernel"] and launch["arch"] == focal["arch"]]
    assert exact and focal["fma"] > exact[0]["fma"]
    assert set(focal["ftz_ops"]) - ahead_of_time.LIBDEVICE_FTZ
    for name in ("fcos_assign_float64_block_g_32", "nms_sweep_16_warps"):
        assert controls[name]["spill_stores"] > 0, name
    assert all(ahead_of_time.problems(control) for control in controls.values())


def test_no_launch_has_a_problem(compiled):
    """The four checks above in one, over every distinct launch (what the held-out run of
    ``python -m benchmarks.triton_launch_table --held-out N`` checks too)."""
    found = {_where(launch): ahead_of_time.problems(launch)
             for launch in compiled["launches"].values()}
    assert not {where: p for where, p in found.items() if p}


# ---------------------------------------------------------------- the choice itself

def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def test_every_size_gets_a_power_of_two_warp_count():
    """Every size, not just the boundaries (issue 11: the old sweep took 3, 5, 6, 7, ...
    warps for 24,513-32,704 boxes and more)."""
    for n in range(1, ahead_of_time.NMS_BOXES + 1):
        for batched in (False, True):
            assert _power_of_two(nms.sweep_launch_config(n, batched).num_warps), n
    assert _power_of_two(nms.mask_launch_config(1, False).num_warps)
    for dtype in ahead_of_time.FLOAT_DTYPES:
        for n in range(1, ahead_of_time.GIOU_PAIRS + 1):
            assert _power_of_two(giou_loss.forward_launch_config(n, dtype, "none").num_warps)
            assert _power_of_two(giou_loss.backward_launch_config(n, dtype, "none").num_warps)
        for g in range(1, ahead_of_time.ASSIGN_SLOTS + 1):
            assert _power_of_two(fcos_assign.launch_config(1000, 2, g, dtype).num_warps)
    for dtype in ahead_of_time.FOCAL_DTYPES:
        for n in range(1, 1 << 14):
            assert _power_of_two(sigmoid_focal_loss.launch_config(
                n, dtype, loss=1, grad=1, has_weight=True).num_warps)
        for k in range(1, ahead_of_time.TOPK_MAX_K + 1):
            block = per_class_topk.list_block(ahead_of_time.TOPK_POINTS, k)
            if block is not None:
                assert _power_of_two(per_class_topk.segment_launch_config(
                    20_000, 80, block, dtype).num_warps)
                assert _power_of_two(per_class_topk.merge_launch_config(80, block, dtype).num_warps)


def test_boundaries_finds_every_change():
    def key(n):
        return (n > 7) + (n > 100) + (n >= 1000) + (n > 1023)
    assert ahead_of_time.boundaries(key, 1, 5000) == [1, 7, 8, 100, 101, 999, 1000, 1023, 1024,
                                                      5000]


def test_cases_cover_the_size_ranges():
    names = {case.name for case in CASES}
    # The sweep's warp changes (128, 256, 512 words), and the two ends.
    for n in (1, 8192, 8193, 16384, 16385, 32768, 32769, 300_000):
        assert f"nms-batched-float32-N={n}" in names and f"nms-float64-N={n}" in names
    assert {c.variant for c in CASES if c.op == "giou_loss"} == {"none", "mean", "sum"}
    blocks = {per_class_topk.list_block(dict(c.sizes)["N"], dict(c.sizes)["k"])
              for c in CASES if c.op == "per_class_topk"}
    assert blocks == {2 ** i for i in range(1, 13)}
    block_g = {fcos_assign.launch_config(1000, 1, dict(c.sizes)["G"], c.dtype).constexprs["BLOCK_G"]
               for c in CASES if c.op == "fcos_assign"}
    assert block_g == {1, 2, 4, 8, 16, 32}
    # The fixed-size NMS at the sweep's warp changes (8192, 16384, 32768 slots), and top-k.
    for length in (1, 8192, 8193, 16384, 16385, 32768, 32769):
        assert f"batched_nms_padded-idxs-float64-S=1280,L={length}" in names
        assert f"batched_nms_padded-float32-S=1280,L={length}" in names
    assert "per_class_topk_padded-float32-N=20000,k=1000" in names
    # The focal loss: every launch kind, with and without a weight, for every logits dtype.
    focal = {(c.variant, c.dtype) for c in CASES if c.op == "sigmoid_focal_loss"}
    assert focal == {(variant + weight, dtype) for variant in ahead_of_time.FOCAL_VARIANTS
                     for weight in ("", "-weight") for dtype in ahead_of_time.FOCAL_DTYPES}


def test_recording_refuses_a_launcher_that_syncs():
    """The launchers run on fake tensors whose shape environment refuses ``.item()``: a
    launcher that synchronised to size something would fail the compile run."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    def syncing_launcher():
        boxes = torch.empty(10, 4)
        torch.empty(int((boxes[:, 0] > 0).sum().item()))

    case = ahead_of_time.Case("probe", torch.float32, (("N", 10),), run=syncing_launcher)
    with pytest.raises(DataDependentOutputException):
        ahead_of_time.record_launches(case)
