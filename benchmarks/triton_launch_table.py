"""Registers, spills and shared memory of every Triton launch configuration, as a table.

    python -m benchmarks.triton_launch_table [--output PATH] [--held-out COUNT]

Compiles what ``tests/ops/test_triton_compile.py`` compiles (``fcos_fast.kernels
.ahead_of_time``: every launch the launchers make at both sides of every boundary of
their configuration choice, for sm_80 and sm_90, no GPU needed) and writes
``benchmarks/results/triton_launch_configs.md``. ``--held-out COUNT`` compiles COUNT
random sizes per op instead, which the tests did not pick, prints the table and exits
non-zero if any launch spills, has a warp count that is not a power of two, or has an
``fma`` or ``.ftz`` in its PTX.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "results", "triton_launch_configs.md")


def compile_all(held_out: int = 0) -> dict:
    """The compile results, from a subprocess with the kernels compiled, not interpreted."""
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "launches.json")
        command = [sys.executable, "-m", "fcos_fast.kernels.ahead_of_time", output]
        if held_out:
            command += ["--held-out", str(held_out)]
        subprocess.run(command, check=True, env={**os.environ, "TRITON_INTERPRET": "0"})
        with open(output) as f:
            return json.load(f)


def _users(results: dict) -> dict[str, list[str]]:
    """Launch id -> the cases that make it, sizes grouped by op, variant and dtype."""
    sizes = collections.defaultdict(lambda: collections.defaultdict(list))
    for case, ids in results["cases"].items():
        group, _, size = case.rpartition("-")
        for launch in set(ids):
            sizes[launch][group].append(size)
    return {launch: [f"{group} {', '.join(s)}" for group, s in groups.items()]
            for launch, groups in sizes.items()}


def _constexprs(launch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in launch["constexprs"].items())


def _specialised(launch: dict) -> str:
    parts = [f"{name}=1" for name in launch["equal_to_1"]]
    parts += [f"{name}%16=0" for name in launch["divisible_by_16"]]
    return ", ".join(parts) or "-"


def _row(launch: dict, used_by: str) -> str:
    cells = [launch["arch"], "/".join(launch["dtypes"]) or "-", _constexprs(launch),
             str(launch["num_warps"]), _specialised(launch), str(launch["registers"]),
             f"{launch['spill_stores']}/{launch['spill_loads']}", str(launch["stack_bytes"]),
             str(launch["shared_bytes"]), str(launch["fma"]), str(launch["ftz"]), used_by]
    return "| " + " | ".join(cells) + " |"


_HEADER = ("| arch | dtype | constexprs | warps | integer args | registers | spills st/ld (B) "
           "| stack (B) | shared (B) | fma | ftz | launched by |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def render(results: dict) -> str:
    import triton

    users = _users(results)
    by_kernel = collections.defaultdict(list)
    for launch_id, launch in results["launches"].items():
        by_kernel[launch["kernel"]].append((launch_id, launch))
    lines = [
        "# Triton launch configurations",
        "",
        "Written by `python -m benchmarks.triton_launch_table`; do not edit. Every launch the",
        "Triton launchers make at both sides of every boundary of their configuration",
        "choice (`fcos_fast.kernels.ahead_of_time`), compiled ahead of time with Triton",
        f"{triton.__version__} for sm_80 and sm_90 (no GPU), read by Triton's `ptxas -v`:",
        "registers per thread, bytes of spill stores/loads and of stack frame, the shared",
        "memory Triton allocates per program, and the `fma` and `.ftz` instructions in the",
        "PTX (every launch compiles with `enable_fp_fusion=False, enable_reflect_ftz=False`).",
        "Integer args: how Triton specialised the launch's integer arguments (a 1 becomes a",
        "constant; multiples of 16 are known to be). `tests/ops/test_triton_compile.py`",
        "asserts no spills, power-of-two warps and no `fma`/`.ftz` for all of them.",
        f"{len(results['launches'])} distinct launches from {len(results['cases'])} cases.",
        "",
    ]
    for kernel in sorted(by_kernel):
        lines += [f"## `{kernel}`", "", _HEADER]
        rows = sorted(by_kernel[kernel], key=lambda item: (
            item[1]["arch"], item[1]["dtypes"], sorted(item[1]["constexprs"].items()),
            item[1]["equal_to_1"], item[1]["divisible_by_16"]))
        lines += [_row(launch, "; ".join(users.get(launch_id, []))) for launch_id, launch in rows]
        lines.append("")
    lines += ["## Controls: what the checks reject", "",
              "A launch of the table with one setting changed, to show that each check can",
              "fail and that the launchers' setting is what passes it.", "", _HEADER]
    lines += [_row(control, name) for name, control in results["controls"].items()]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--held-out", type=int, default=0, metavar="COUNT")
    args = parser.parse_args(argv)
    results = compile_all(args.held_out)
    table = render(results)
    if args.held_out:
        from fcos_fast.kernels.ahead_of_time import problems

        print(table)
        found = [f"{launch['kernel']} {launch['arch']} {launch['constexprs']}: {p}"
                 for launch in results["launches"].values() for p in problems(launch)]
        print("\n".join(found) or "held-out launches: no problems")
        sys.exit(1 if found else 0)
    with open(args.output, "w") as f:
        f.write(table)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
