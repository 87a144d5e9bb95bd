"""The GPU check: what ``scripts/gpu_check.sh`` runs (see its header for the usage).

A GPU machine is lent now and then, for minutes, start included: the check spends them
on answers, most valuable first, and never past its budget.

    environment  GPU, driver, versions (env.log)
    tools        what the later steps need, installed from ./wheels when missing (the
                 GPU machine has no network); pytest-xdist, pycocotools, expecttest,
                 matplotlib and ninja are optional
    build        fcos_fast._C for the visible GPU only (TORCH_CUDA_ARCH_LIST from its
                 compute capability, every core), then: every op has a CUDA kernel and
                 Triton runs on CUDA (build.log)
    pytest       pytest -m cuda (-n with pytest-xdist) with a JUnit XML: every test must
                 pass; a skip, a failure, an error or an empty run fails the step; a test
                 that fails only for a missing optional tool is listed as not run
    memcheck     compute-sanitizer memcheck on scripts/cuda_smoke.py, native then triton
    benchmarks   python -m benchmarks.run --quick, alone on the GPU (<device>.json/.md)
    racecheck    compute-sanitizer racecheck, native then triton
    synccheck    compute-sanitizer synccheck, native then triton
    export       python -m benchmarks.bench_export --quick at 512 px (export/<device>.md)

Budget. Step i must end by ``start + budget * (share_1 + ... + share_i)``: a step that
finishes early leaves its time to the next ones, a step that starts with less than its
least useful time left is not reached, a running one is stopped at its deadline, and the
last deadline is the budget: the check never overruns (default 480 s, ``--budget-s``).

Sanitizers. A tool that refuses the device (``Device not supported``, as on gVisor
machines) is reported as unavailable on that machine, not failed. Findings count only in
fcos_fast's own kernels (the CUDA kernels in namespace ``fcos_fast``, the Triton kernels
of ``kernels/``); those in PyTorch's or CUB's kernels are listed, not failed. Each run's
whole log stays in OUTDIR.

Rehearsal (``--rehearse``, no GPU needed; part of ``make test``): every step runs its own
code on the CPU, so that nothing in the check runs for the first time on a GPU. The
environment and tools steps run as they are; build checks the extension ``make`` built
(every op's CPU kernel, Triton under the interpreter); pytest collects every ``cuda``
test and classifies a JUnit file with a pass, a skip, a failure and an optional-tool
error; each sanitizer step runs the smoke program with the command line and working
directory of its sanitizer runs, without the sanitizer, on the CPU (memcheck both
backends; racecheck and synccheck check their command lines), and classifies sample
logs of each outcome; benchmarks and export run in their quickest form. A step whose
code ran and gave what it should is REHEARSED; any other outcome fails the rehearsal.

Outputs in OUTDIR: summary.txt (the screen), summary.json, timing.tsv, and every log.
Exit status: 0 every step passed (sanitizers may be unavailable) or, rehearsing, every
step rehearsed; 1 otherwise; 2 no CUDA GPU visible (and not rehearsing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

PASSED, FAILED, REHEARSED = "passed", "FAILED", "REHEARSED"
UNAVAILABLE, NOT_REACHED, STOPPED = "unavailable", "not reached", "STOPPED at its deadline"

#: (module, pip package): the check cannot run without these.
NEEDED_TOOLS = (("setuptools", "setuptools"), ("pytest", "pytest"),
                ("hypothesis", "hypothesis"), ("pytest_benchmark", "pytest-benchmark"))
#: Optional: without them a step is slower or some tests are reported as not run.
OPTIONAL_TOOLS = (("xdist", "pytest-xdist"), ("pytest_timeout", "pytest-timeout"),
                  ("expecttest", "expecttest"), ("pycocotools", "pycocotools"),
                  ("matplotlib", "matplotlib"), ("ninja", "ninja"))
#: Test failures that only mean an optional module is missing.
OPTIONAL_TEST_MODULES = ("pycocotools", "expecttest")

#: compute-sanitizer's words when it cannot check this machine's GPU at all.
SANITIZER_UNAVAILABLE = re.compile(
    r"Device not supported|not supported on this (platform|device)|"
    r"Unable to (find|initialize|load)|Target application.*failed to launch|"
    r"Error: ?No CUDA-capable device|error 999", re.IGNORECASE)
#: A finding's first line in any tool's log.
SANITIZER_FINDING = re.compile(
    r"^========= (Invalid |Error|Barrier error|Race reported|Program hit |Uninitialized|"
    r"Malloc/Free error|Leaked |Cuda API error|Warning: (Race|Barrier))")


# ----------------------------------------------------------------- the step machinery

@dataclass
class Outcome:
    status: str
    detail: str = ""


@dataclass
class Check:
    out: Path
    rehearse: bool
    budget_s: float
    python: str = sys.executable
    started: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # of the step running now (time.monotonic)
    device: str = "cpu"
    gpu: str = ""
    xdist: bool = False
    optional_missing: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
        if self.device == "cpu":
            env["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU tensors
        return env

    def run(self, argv: list[str], log: str, env: dict[str, str] | None = None,
            timeout: float | None = None) -> tuple[int | None, str]:
        """``argv`` in the repository root, output to ``OUTDIR/log``; ``(exit status or
        None when stopped at the deadline, output)``."""
        timeout = self.left() if timeout is None else min(timeout, self.left())
        path = self.out / log
        with open(path, "w") as file:
            file.write(f"$ {' '.join(argv)}\n")
            file.flush()
            try:
                result = subprocess.run(argv, cwd=ROOT, env=env or self.env(), stdout=file,
                                        stderr=subprocess.STDOUT, timeout=max(timeout, 1))
                status = result.returncode
            except subprocess.TimeoutExpired:
                status = None
        output = path.read_text(errors="replace")
        if status is None:
            with open(path, "a") as file:
                file.write(f"\n[stopped: the step's deadline, {timeout:.0f} s]\n")
        return status, output

    def fail(self, what: str, status: int | None, output: str) -> Outcome:
        if status is None:
            return Outcome(STOPPED, what)
        return Outcome(FAILED, f"{what} (exit {status}): {last_line(output)}")

    def done(self, detail: str = "") -> Outcome:
        return Outcome(REHEARSED if self.rehearse else PASSED, detail)

    def gpu_arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST of the visible GPU, e.g. ``9.0``."""
        capability = re.search(r"\(sm_(\d+)(\d)\)", self.gpu)
        return f"{capability.group(1)}.{capability.group(2)}" if capability else ""


@dataclass
class Step:
    name: str
    share: float   # of the budget
    least_s: float  # with less time left than this, not worth starting
    run: Callable[[Check], Outcome]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else "(no output)"


# ----------------------------------------------------------------- steps

def step_environment(check: Check) -> Outcome:
    lines = []
    if shutil.which("nvidia-smi"):
        status, output = check.run(["nvidia-smi"], "nvidia-smi.log", timeout=30)
        lines.append(output)
    else:
        lines.append("nvidia-smi: not on PATH")
    program = ("import json, os, sys, torch, torchvision, triton\n"
               "gpu = torch.cuda.is_available()\n"
               "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__,"
               " 'cuda': torch.version.cuda, 'torchvision': torchvision.__version__,"
               " 'triton': triton.__version__, 'cores': os.cpu_count(),"
               " 'gpu': torch.cuda.get_device_name() if gpu else '',"
               " 'capability': list(torch.cuda.get_device_capability()) if gpu else []}))")
    status, output = check.run([check.python, "-c", program], "versions.log", timeout=120)
    if status != 0:
        return check.fail("python cannot import torch, torchvision and triton", status, output)
    info = json.loads(output.strip().splitlines()[-1])
    (check.out / "env.log").write_text("\n".join(lines) + "\n" + json.dumps(info, indent=1))
    versions = (f"torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
                f"python {info['python']}, {info['cores']} cores")
    if info["gpu"]:
        check.device = "cuda"
        check.gpu = f"{info['gpu']} (sm_{''.join(map(str, info['capability']))})"
        return check.done(f"{check.gpu}; {versions}")
    if check.rehearse:
        return check.done(f"no GPU: rehearsal on the CPU; {versions}")
    return Outcome(FAILED, f"no CUDA GPU visible to torch; {versions}")


def step_tools(check: Check) -> Outcome:
    wheels = ROOT / "wheels"
    needed_missing, installed = [], []
    for module, package in NEEDED_TOOLS + OPTIONAL_TOOLS:
        if importlib.util.find_spec(module) is not None:
            continue
        if wheels.is_dir():
            status, _ = check.run([check.python, "-m", "pip", "install", "--no-index",
                                   "--find-links", str(wheels), package],
                                  f"install-{package}.log", timeout=300)
            if status == 0:
                installed.append(package)
                continue
        if (module, package) in NEEDED_TOOLS:
            needed_missing.append(package)
        else:
            check.optional_missing.append(package)
    importlib.invalidate_caches()
    check.xdist = importlib.util.find_spec("xdist") is not None
    notes = []
    if installed:
        notes.append(f"installed from ./wheels: {', '.join(installed)}")
    if check.optional_missing:
        notes.append(f"optional, missing: {', '.join(check.optional_missing)}")
    if needed_missing:
        return Outcome(FAILED, f"missing, needed: {', '.join(needed_missing)} (put their "
                               f"wheels in ./wheels; README, 'The GPU check')")
    return check.done("; ".join(notes))


def build_check(device: str) -> None:
    """What ``build`` checks of the extension, on ``device`` (``--check-build``)."""
    from fcos_fast import _extension, ops
    from fcos_fast.ops._dispatch import BACKENDS, OP_NAMES

    missing = [op for op in OP_NAMES if not _extension.native_has_kernel(op, device)]
    if missing:
        sys.exit(f"fcos_fast._C has no {device.upper()} kernel for {missing} "
                 f"({_extension.NATIVE_ERROR or 'built without CUDA: is nvcc on PATH?'})")
    if "triton" not in ops.available_backends(device):
        reasons = BACKENDS["triton"].not_supported_reasons(OP_NAMES[0], device)
        sys.exit(f"the triton backend cannot run on {device}: {'; '.join(reasons)}")
    print(f"{device}: every op has a native kernel, and the triton backend runs")


def step_build(check: Check) -> Outcome:
    detail = ""
    if check.rehearse:
        detail = "no compile (the extension make built); checked on the CPU"
    else:
        env = check.env(MAX_JOBS=str(os.cpu_count() or 4),
                        TORCH_CUDA_ARCH_LIST=check.gpu_arch())
        nvcc = shutil.which("nvcc") or next(
            (str(p) for p in [Path(os.environ.get("CUDA_HOME", "/nonexistent")) / "bin/nvcc",
                              Path("/usr/local/cuda/bin/nvcc")] if p.is_file()), None)
        if nvcc is None:
            return Outcome(FAILED, "no nvcc on PATH, in $CUDA_HOME or /usr/local/cuda")
        env["PATH"] = f"{Path(nvcc).parent}{os.pathsep}{env['PATH']}"
        status, output = check.run([check.python, "-m", "pip", "install", "--no-build-isolation",
                                    "--no-deps", "-e", "."], "build.log", env=env)
        if status != 0:
            return check.fail("pip install -e . failed", status, output)
        detail = f"for {env['TORCH_CUDA_ARCH_LIST']} only"
    status, output = check.run([check.python, str(Path(__file__)), "--check-build",
                                check.device], "build-check.log", timeout=300)
    if status != 0:
        return check.fail("the extension is incomplete", status, output)
    return check.done(detail)


def classify_junit(path: Path, pytest_status: int, optional_missing: list[str]
                   ) -> tuple[dict[str, list[str]], list[str]]:
    """``(outcomes by kind, problems)`` of a pytest JUnit XML: every ``cuda`` test must
    have run and passed; a failure that is only a missing optional module is "not run"."""
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as error:
        return {}, [f"no JUnit XML from pytest ({error}); pytest exit status {pytest_status}"]
    outcomes: dict[str, list[str]] = {"passed": [], "xfailed": [], "skipped": [],
                                      "failed": [], "not run": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            text = (problem.get("message") or "") + (problem.text or "")
            needs = [m for m in optional_missing if f"No module named '{m}'" in text]
            if needs:
                outcomes["not run"].append(f"{name}  (needs {needs[0]}, not installed)")
            else:
                outcomes["failed"].append(f"{name}  {(problem.get('message') or '')[:200]}")
        elif skipped is not None:
            kind = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
            outcomes[kind].append(f"{name}  {skipped.get('message') or ''}")
        else:
            outcomes["passed"].append(name)
    problems = []
    if pytest_status not in (0, 1):
        problems.append(f"pytest exited with {pytest_status} (collection error or interrupted)")
    if outcomes["failed"]:
        problems.append(f"{len(outcomes['failed'])} failed, first {outcomes['failed'][0]}")
    if outcomes["skipped"]:
        problems.append(f"{len(outcomes['skipped'])} skipped on a GPU machine, first "
                        f"{outcomes['skipped'][0]}")
    if not outcomes["passed"]:
        problems.append("no cuda test passed")
    if pytest_status == 1 and not outcomes["failed"] and not outcomes["not run"]:
        problems.append("pytest reported a failure the XML does not show")
    return outcomes, problems


_JUNIT_SAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.ops.test_a" name="test_passes" time="0.1"/>
<testcase classname="tests.ops.test_a" name="test_skips" time="0.0">
  <skipped type="pytest.skip" message="needs a CUDA GPU">skipped</skipped></testcase>
<testcase classname="tests.ops.test_a" name="test_fails" time="0.2">
  <failure message="AssertionError: assert False">assert False</failure></testcase>
<testcase classname="tests.test_b" name="test_needs_pycocotools" time="0.0">
  <error message="collection failure">ModuleNotFoundError: No module named 'pycocotools'</error>
</testcase></testsuite></testsuites>
"""


def step_pytest(check: Check) -> Outcome:
    if check.rehearse:
        status, output = check.run([check.python, "-m", "pytest", "-m", "cuda", "--collect-only",
                                    "-q", "-p", "no:cacheprovider", "tests"], "pytest_cuda.log")
        collected = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
        if status != 0 or not collected or int(collected.group(1)) == 0:
            return check.fail("collecting the cuda tests failed", status, output)
        sample = check.out / "pytest_cuda_sample.xml"
        sample.write_text(_JUNIT_SAMPLE)
        outcomes, problems = classify_junit(sample, 1, ["pycocotools"])
        counts = {kind: len(names) for kind, names in outcomes.items()}
        expected = {"passed": 1, "xfailed": 0, "skipped": 1, "failed": 1, "not run": 1}
        if counts != expected or len(problems) != 2:
            return Outcome(FAILED, f"the JUnit sample was classified {counts}, problems "
                                   f"{problems}; expected {expected} and 2 problems")
        return check.done(f"{collected.group(1)} cuda tests collected; the outcome "
                          f"classifier sorted a pass, a skip, a failure, a missing tool")
    xml = check.out / "pytest_cuda.xml"
    argv = [check.python, "-m", "pytest", "-m", "cuda", "-rA", "-p", "no:cacheprovider",
            f"--junitxml={xml}", "tests"]
    if check.xdist:
        argv[3:3] = ["-n", str(min(8, os.cpu_count() or 1))]
    status, output = check.run(argv, "pytest_cuda.log")
    if status is None:
        return Outcome(STOPPED, f"pytest ran past its deadline ({last_line(output)})")
    outcomes, problems = classify_junit(xml, status, check.optional_missing)
    lines = [f"{kind.upper()}: {name}" for kind in ("failed", "skipped", "not run", "xfailed")
             for name in outcomes.get(kind, [])]
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcomes.items())
    (check.out / "pytest_cuda_outcomes.txt").write_text("\n".join(lines + [counts]) + "\n")
    if problems:
        return Outcome(FAILED, "; ".join(problems))
    return check.done(counts)


def our_kernel_names() -> list[str]:
    """What names fcos_fast's kernels in a sanitizer's report: the namespace of the CUDA
    kernels, and each Triton kernel's function name (its symbol)."""
    names = ["fcos_fast"]
    for path in sorted((ROOT / "kernels").glob("*.py")):
        names += re.findall(r"^def (_\w+_kernel)\(", path.read_text(), re.MULTILINE)
    return names


def sanitizer_findings(log: str, ours: list[str]) -> tuple[list[str], list[str]]:
    """``(in fcos_fast's kernels, elsewhere)``: each finding as its first line, with the
    kernel named in the lines that follow it."""
    records: list[list[str]] = []
    for line in log.splitlines():
        if SANITIZER_FINDING.match(line):
            records.append([line])
        elif records and line.startswith("=========  ") and len(records[-1]) < 12:
            records[-1].append(line)
    mine, others = [], []
    for record in records:
        text = " ".join(record)
        summary = " ".join(part.strip("= ") for part in record[:3])[:200]
        (mine if any(name in text for name in ours) else others).append(summary)
    return mine, others


def classify_sanitizer_log(log: str, status: int | None, ours: list[str]) -> Outcome:
    if SANITIZER_UNAVAILABLE.search(log):
        return Outcome(UNAVAILABLE, SANITIZER_UNAVAILABLE.search(log).group(0))
    mine, others = sanitizer_findings(log, ours)
    elsewhere = (f"; {len(others)} outside fcos_fast (not ours), first: {others[0]}"
                 if others else "")
    if mine:
        return Outcome(FAILED, f"{len(mine)} in fcos_fast's kernels, first: {mine[0]}{elsewhere}")
    if status is None:
        return Outcome(STOPPED, "the smoke program ran past the deadline")
    if status != 0 or "every op ok" not in log:
        return Outcome(FAILED, f"the smoke program failed (exit {status}): {last_line(log)}")
    return Outcome(PASSED, f"clean{elsewhere}")


_SANITIZER_SAMPLES = {
    "clean": ("smoke (native on cuda): every op ok\n========= ERROR SUMMARY: 0 errors\n", 0,
              PASSED),
    "ours": ("========= Invalid __global__ read of size 4 bytes\n"
             "=========     at void fcos_fast::ops::nms_mask_kernel<float>(...)+0x1a0\n"
             "=========     by thread (3,0,0) in block (0,0,0)\n"
             "========= ERROR SUMMARY: 1 error\n", 0, FAILED),
    "triton": ("========= Error: Race reported between Write access at _nms_sweep_kernel+0x40\n"
               "=========     and Read access at _nms_sweep_kernel+0x80 [4 hazards]\n", 0, FAILED),
    "theirs": ("========= Invalid __shared__ read of size 8 bytes\n"
               "=========     at void cub::DeviceRadixSortOnesweepKernel<...>(...)+0x2b0\n"
               "smoke (native on cuda): every op ok\n========= ERROR SUMMARY: 1 error\n", 0,
               PASSED),
    "unsupported": ("========= Error: Device not supported\n", 999, UNAVAILABLE),
    "crashed": ("Traceback (most recent call last):\nRuntimeError: CUDA error\n", 1, FAILED),
}


def sanitizer_command(check: Check, tool: str) -> list[str]:
    """The sanitizer's command line: its options, then the smoke program's command line
    (what the rehearsal runs alone, from the same folder)."""
    smoke = [check.python, "scripts/cuda_smoke.py", "--device", check.device]
    sanitizer = (shutil.which("compute-sanitizer")
                 or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/"
                                                                         "compute-sanitizer"))),
                         "compute-sanitizer"))
    return [sanitizer, "--tool", tool, "--report-api-errors", "no", "--print-limit", "50",
            *smoke]


def sanitizer_step(tool: str, backends: tuple[str, ...], run_smoke: bool
                   ) -> Callable[[Check], Outcome]:
    def step(check: Check) -> Outcome:
        ours = our_kernel_names()
        argv = sanitizer_command(check, tool)
        smoke = argv[argv.index(check.python):]
        if check.rehearse:
            for name, (log, status, expected) in _SANITIZER_SAMPLES.items():
                got = classify_sanitizer_log(log, status, ours).status
                if got != expected:
                    return Outcome(FAILED, f"the {name} sample log was classified {got}, "
                                           f"not {expected}")
            ran = []
            for backend in backends if run_smoke else ():
                status, output = check.run(smoke, f"sanitizer_{tool}_{backend}.log",
                                           env=check.env(FCOS_FAST_BACKEND=backend))
                if status != 0 or "every op ok" not in output:
                    return check.fail(f"the smoke program ({backend})", status, output)
                ran.append(backend)
            what = (f"smoke program ran ({', '.join(ran)}) as under the sanitizer"
                    if ran else "command line " + " ".join(argv[:4]))
            return check.done(f"{what}; sample logs classified")
        results = []
        for backend in backends:
            extra = {"FCOS_FAST_BACKEND": backend}
            if tool == "memcheck":  # a tensor's end is an allocation's end
                extra["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
            status, output = check.run(argv, f"sanitizer_{tool}_{backend}.log",
                                       env=check.env(**extra))
            outcome = classify_sanitizer_log(output, status, ours)
            results.append((backend, outcome))
            if outcome.status in (UNAVAILABLE, STOPPED):
                break
        detail = "; ".join(f"{backend}: {o.status}" + (f" ({o.detail})" if o.detail else "")
                           for backend, o in results)
        for status in (FAILED, STOPPED, UNAVAILABLE):
            if any(o.status == status for _, o in results):
                return Outcome(status, detail)
        return Outcome(PASSED, detail)

    return step


def step_benchmarks(check: Check) -> Outcome:
    mode = "--rehearse" if check.rehearse else "--quick"
    results = check.out / ("bench-rehearsal" if check.rehearse else ".")
    status, output = check.run([check.python, "-m", "benchmarks.run", mode, "--results-dir",
                                str(results), "--no-readme"], "bench.log")
    if status != 0:
        return check.fail("benchmarks.run", status, output)
    return check.done(last_line(output))


def step_export(check: Check) -> Outcome:
    sizes = ["--sizes", "64", "--batches", "1"] if check.rehearse else ["--sizes", "512"]
    status, output = check.run([check.python, "-m", "benchmarks.bench_export", "--quick", *sizes,
                                "--results-dir", str(check.out / "export"), "--no-readme"],
                               "export.log")
    if status != 0:
        return check.fail("benchmarks.bench_export", status, output)
    return check.done(last_line(output))


STEPS = (
    Step("environment", 0.02, 5, step_environment),
    Step("tools", 0.03, 5, step_tools),
    Step("build", 0.22, 60, step_build),
    Step("pytest", 0.30, 60, step_pytest),
    Step("memcheck", 0.12, 40, sanitizer_step("memcheck", ("native", "triton"), True)),
    Step("benchmarks", 0.14, 45, step_benchmarks),
    Step("racecheck", 0.07, 30, sanitizer_step("racecheck", ("native", "triton"), False)),
    Step("synccheck", 0.04, 20, sanitizer_step("synccheck", ("native", "triton"), False)),
    Step("export", 0.06, 25, step_export),
)


# ----------------------------------------------------------------- the check

def run_check(check: Check, steps=STEPS) -> list[tuple[str, Outcome, float]]:
    """Every step in order under its deadline; ``(name, outcome, seconds)`` each."""
    results = []
    share = 0.0
    stop = False
    for step in steps:
        share += step.share
        check.deadline = check.started + check.budget_s * share
        if stop or check.left() < step.least_s:
            results.append((step.name, Outcome(NOT_REACHED, "" if stop else
                                               f"{max(check.left(), 0):.0f} s left, needs "
                                               f"{step.least_s:.0f}"), 0.0))
            continue
        print(f"=== {step.name} (until {check.deadline - check.started:.0f} s)", flush=True)
        begin = time.monotonic()
        try:
            outcome = step.run(check)
        except Exception as error:  # a bug in the check itself: say so, go on
            outcome = Outcome(FAILED, f"the step raised {type(error).__name__}: {error}")
        seconds = time.monotonic() - begin
        print(f"--- {step.name}: {outcome.status} in {seconds:.1f} s  {outcome.detail}",
              flush=True)
        results.append((step.name, outcome, seconds))
        if step.name == "environment" and check.device != "cuda" and not check.rehearse:
            stop = True  # no GPU: nothing else can run
    return results


def summary(check: Check, results, total: float) -> str:
    mode = "rehearsal on the CPU" if check.rehearse else check.gpu or "no GPU"
    lines = [f"GPU check: {mode}; budget {check.budget_s:.0f} s, took {total:.1f} s",
             f"{'step':<12} {'outcome':<24} {'seconds':>8}  first problem / note"]
    for name, outcome, seconds in results:
        lines.append(f"{name:<12} {outcome.status:<24} {seconds:8.1f}  {outcome.detail}"[:230])
    lines.append(f"logs and results in {check.out}")
    return "\n".join(lines) + "\n"


def exit_status(check: Check, results) -> int:
    if not check.rehearse and check.device != "cuda":
        return 2
    good = {REHEARSED} if check.rehearse else {PASSED, UNAVAILABLE}
    return 0 if all(outcome.status in good for _, outcome, _ in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="folder for the logs and results")
    parser.add_argument("--rehearse", action="store_true",
                        help="run every step's own code on the CPU (no GPU needed)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="the whole check's time limit in seconds (default 480; "
                             "rehearsing on a CPU, 1800)")
    parser.add_argument("--check-build", choices=("cpu", "cuda"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_build:
        build_check(args.check_build)
        return 0
    if args.out is None:
        parser.error("OUTDIR is required")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget_s = args.budget_s or (1800.0 if args.rehearse else 480.0)
    check = Check(out=out, rehearse=args.rehearse, budget_s=budget_s,
                  python=os.environ.get("PYTHON", sys.executable))
    results = run_check(check)
    total = time.monotonic() - check.started
    text = summary(check, results, total)
    (out / "summary.txt").write_text(text)
    (out / "timing.tsv").write_text("".join(f"{name}\t{seconds:.3f}\n"
                                            for name, _, seconds in results)
                                    + f"total\t{total:.3f}\n")
    status = exit_status(check, results)
    (out / "summary.json").write_text(json.dumps({
        "rehearse": check.rehearse, "budget_s": check.budget_s, "total_s": round(total, 3),
        "gpu": check.gpu, "exit": status,
        "steps": [{"name": n, "status": o.status, "detail": o.detail, "seconds": round(s, 3)}
                  for n, o, s in results]}, indent=1))
    print("\n" + text, end="")
    if status == 2:
        print("no CUDA GPU visible: nothing to check here (the CPU tests are `make test`; "
              "`--rehearse` runs this check's own code on the CPU)")
    return status


if __name__ == "__main__":
    sys.exit(main())
