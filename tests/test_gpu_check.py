"""scripts/gpu_check.sh before a GPU ever sees it: the rehearsal of every step on the CPU,
the budget that the check never overruns, and the classifiers that turn JUnit XML and
compute-sanitizer logs into step outcomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

sys.path.remove(str(ROOT / "scripts"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(gpu_check.shutil.which("nvidia-smi") is not None and
                    __import__("torch").cuda.is_available(),
                    reason="on a GPU machine the check itself runs")
def test_the_rehearsal_runs_every_step_on_the_cpu(tmp_path):
    """``gpu_check.sh --rehearse`` as make test runs it: exit 0, every step REHEARSED, the
    smoke program run for both backends as the sanitizers run it, one screen of summary."""
    out = tmp_path / "rehearsal"
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--rehearse", str(out)], cwd=ROOT,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=3600)
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, (out / "summary.txt").read_text()
    steps = {step["name"]: step for step in summary["steps"]}
    assert list(steps) == [step.name for step in gpu_check.STEPS]
    assert {step["status"] for step in summary["steps"]} == {gpu_check.REHEARSED}
    for backend in ("native", "triton"):
        log = (out / f"sanitizer_memcheck_{backend}.log").read_text()
        assert log.startswith(f"$ {sys.executable} scripts/cuda_smoke.py --device cpu")
        assert f"smoke ({backend} on cpu): every op ok" in log
    assert int(steps["pytest"]["detail"].split()[0]) > 100  # cuda tests collected
    assert len((out / "summary.txt").read_text().splitlines()) <= 15
    assert summary["total_s"] <= summary["budget_s"]


def test_cuda_smoke_runs_from_the_repository_root_on_the_cpu():
    """As gpu_check runs it (issue 17: ModuleNotFoundError, `benchmarks` was not on the
    import path of a script run from the root)."""
    result = subprocess.run([sys.executable, "scripts/cuda_smoke.py", "--device", "cpu"],
                            cwd=ROOT, env={**os.environ, "FCOS_FAST_BACKEND": "native"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    done = [line.split(": ")[1] for line in result.stdout.splitlines()]
    assert done == ["nms ok", "giou_loss ok", "per_class_topk ok", "per_class_topk_padded ok",
                    "batched_nms_padded ok", "fcos_assign ok", "sigmoid_focal_loss ok",
                    "every op ok"]


def _sleeper(seconds: float, name: str):
    def step(check):
        status, output = check.run(["sleep", str(seconds)], f"{name}.log")
        return check.fail("slept", status, output) if status != 0 else check.done()
    return step


def test_the_budget_is_never_overrun(tmp_path):
    """Deadlines from one budget: a step that runs into its deadline is stopped there, a
    step with less than its least useful time left is not reached, and time one step
    leaves unused goes to the next (shares 0.2/0.3/0.3/0.2 of 6 s)."""
    steps = (gpu_check.Step("quick", 0.2, 0, _sleeper(0.1, "quick")),
             gpu_check.Step("uses_the_rest", 0.3, 0, _sleeper(2.0, "uses_the_rest")),
             gpu_check.Step("overruns", 0.3, 0, _sleeper(60, "overruns")),
             gpu_check.Step("needs_more", 0.2, 5, _sleeper(0.1, "needs_more")))
    check = gpu_check.Check(out=tmp_path, rehearse=True, budget_s=6.0)
    results = gpu_check.run_check(check, steps)
    total = time.monotonic() - check.started
    statuses = [outcome.status for _, outcome, _ in results]
    assert statuses == [gpu_check.REHEARSED, gpu_check.REHEARSED, gpu_check.STOPPED,
                        gpu_check.NOT_REACHED]
    # uses_the_rest needed 2 s, more than its own 1.8 s share: quick's leftover paid.
    assert total <= 6.0 + 0.5
    assert gpu_check.exit_status(check, results) == 1


def test_junit_outcomes_are_classified():
    """A pass, a skip, a failure and an error that is only a missing optional module: the
    step fails for the failure and the skip, not for the missing tool."""
    sample = Path(os.environ.get("TMPDIR", "/tmp")) / f"junit-{os.getpid()}.xml"
    sample.write_text(gpu_check._JUNIT_SAMPLE)
    try:
        outcomes, problems = gpu_check.classify_junit(sample, 1, ["pycocotools"])
    finally:
        sample.unlink()
    assert {k: len(v) for k, v in outcomes.items()} == {
        "passed": 1, "xfailed": 0, "skipped": 1, "failed": 1, "not run": 1}
    assert "test_needs_pycocotools" in outcomes["not run"][0]
    assert len(problems) == 2 and "1 failed" in problems[0] and "skipped" in problems[1]
    outcomes, problems = gpu_check.classify_junit(Path("/nonexistent.xml"), 2, [])
    assert problems and "no JUnit XML" in problems[0]


@pytest.mark.parametrize("name", sorted(gpu_check._SANITIZER_SAMPLES))
def test_sanitizer_logs_are_classified(name):
    """Findings fail the step only in fcos_fast's kernels (CUDA namespace or Triton kernel
    names); a device the tool refuses is unavailable, not failed."""
    log, status, expected = gpu_check._SANITIZER_SAMPLES[name]
    assert gpu_check.classify_sanitizer_log(log, status, gpu_check.our_kernel_names()).status \
        == expected


def test_our_kernel_names_are_every_triton_kernel():
    names = gpu_check.our_kernel_names()
    from fcos_fast.kernels import fcos_assign, giou_loss, nms, per_class_topk

    defined = {name for module in (fcos_assign, giou_loss, nms, per_class_topk)
               for name in vars(module) if name.startswith("_") and name.endswith("_kernel")}
    assert defined and defined <= set(names) and "fcos_fast" in names
