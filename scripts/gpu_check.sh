#!/usr/bin/env bash
# The whole GPU check in one command, for whoever gets a machine with a CUDA GPU:
#
#     bash scripts/gpu_check.sh OUTDIR
#
# Steps, each timed (seconds per step on screen and in OUTDIR/timing.tsv), every log in
# OUTDIR:
#   environment  nvidia-smi, versions; is a GPU visible?
#   tools        build and test tools that are missing, installed from ./wheels when that
#                folder exists (the GPU machine may have no network: nothing is fetched);
#                setuptools, pytest, hypothesis and pytest-benchmark are needed,
#                expecttest, pycocotools, matplotlib and ninja optional
#   build        fcos_fast._C with its CUDA kernels for this GPU (MAX_JOBS = all cores);
#                fails if any op lacks a CUDA kernel or Triton is not available on CUDA
#   pytest       `pytest -m cuda` with a JUnit XML; fails on any failure or error, on
#                any skipped `cuda` test, and when no test ran. A test that fails only
#                because an optional tool is not installed (pycocotools, expecttest) is
#                listed as not run, not counted as a failure.
#   sanitizers   compute-sanitizer memcheck, racecheck and synccheck on
#                scripts/cuda_smoke.py for FCOS_FAST_BACKEND=native and =triton: six
#                runs started after the build, side by side with pytest (memcheck
#                without PyTorch's caching allocator, so that an access past a tensor's
#                end is past an allocation's end); each run's seconds in timing.tsv
#   benchmarks   python -m benchmarks.run --quick, alone on the GPU: <device>.json rows,
#                <device>.md table (and <device>.png when matplotlib is installed) in OUTDIR
#   export       python -m benchmarks.bench_export --quick at 512 px, batch 1 and 8, in
#                float32 and at auto's precision (bfloat16 on Ampere+): the eager model,
#                StaticFCOS eager/compiled, CUDA graphs, the exported program
#                (OUTDIR/export/<device>.md); skipped, not failed, when the time left is
#                under 2 minutes
#
# Exit status: 0 every step passed; 1 a step failed (OUTDIR/summary.txt says which);
# 2 no CUDA GPU is visible: it says so and runs nothing (the CPU checks are `make test`).
# Sized to finish within 8 minutes on one H100/H200 with 16 cores, build included; the
# total is printed and a run over budget is flagged in the summary.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET_S=480
SANITIZER_TIMEOUT_S=${SANITIZER_TIMEOUT_S:-300}
: > "$OUT/timing.tsv"
: > "$OUT/summary.txt"
status=0
check_start=$(date +%s%N)

elapsed_s() {  # seconds since $1 (date +%s%N), to the millisecond
  local ms=$((($(date +%s%N) - $1) / 1000000))
  printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

# run_step NAME FUNCTION: runs it, times it, records PASS/FAIL.
run_step() {
  local name=$1 start rc seconds
  echo
  echo "=== $name ==="
  start=$(date +%s%N)
  "$2"
  rc=$?
  seconds=$(elapsed_s "$start")
  printf '%s\t%s\n' "$name" "$seconds" >> "$OUT/timing.tsv"
  if [ "$rc" -eq 0 ]; then
    echo "--- $name: passed in ${seconds}s"
    printf 'PASS  %-12s %8ss\n' "$name" "$seconds" >> "$OUT/summary.txt"
  else
    echo "--- $name: FAILED in ${seconds}s (exit $rc)"
    printf 'FAIL  %-12s %8ss  (exit %s)\n' "$name" "$seconds" "$rc" >> "$OUT/summary.txt"
    status=1
  fi
  return "$rc"
}

finish() {
  local total
  total=$(elapsed_s "$check_start")
  printf 'total\t%s\n' "$total" >> "$OUT/timing.tsv"
  if [ "${total%.*}" -gt "$BUDGET_S" ]; then
    echo "OVER BUDGET: ${total}s > ${BUDGET_S}s" | tee -a "$OUT/summary.txt"
  fi
  echo "total ${total}s, exit $1" >> "$OUT/summary.txt"
  echo
  cat "$OUT/summary.txt"
  echo "results and logs in $OUT"
  exit "$1"
}

# ----------------------------------------------------------------- steps

step_environment() {
  {
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
    $PY -c "import sys, torch, triton, torchvision; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, \
'triton', triton.__version__)"
    command -v nvcc || echo "nvcc: not on PATH"
    echo "cores: $(nproc)"
  } 2>&1 | tee "$OUT/env.log"
}

gpu_visible_to_torch() {
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

gpu_visible_to_driver() {
  nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

step_tools() {
  local missing=0 entry module package
  # module:pip-package. The first four are needed; the rest have fallbacks.
  for entry in setuptools:setuptools pytest:pytest hypothesis:hypothesis \
               pytest_benchmark:pytest-benchmark expecttest:expecttest \
               pycocotools:pycocotools matplotlib:matplotlib ninja:ninja; do
    module=${entry%%:*}
    package=${entry#*:}
    $PY -c "import $module" 2>/dev/null && continue
    if [ -d wheels ]; then
      $PY -m pip install -q --no-index --find-links wheels "$package" \
        || echo "could not install $package from ./wheels"
    fi
    if ! $PY -c "import $module" 2>/dev/null; then
      case $module in
        setuptools|pytest|hypothesis|pytest_benchmark)
          echo "MISSING (needed): $package"
          missing=1 ;;
        ninja) echo "missing: ninja (the build compiles one file at a time: slower)" ;;
        *) echo "missing: $package (what needs it is reported as not run)" ;;
      esac
    fi
  done
  return "$missing"
}

step_build() {
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  # setup.py builds the CUDA kernels only with an nvcc: take the toolkit's if none is on PATH.
  if ! command -v nvcc >/dev/null; then
    for dir in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
      if [ -n "$dir" ] && [ -x "$dir/bin/nvcc" ]; then export PATH="$dir/bin:$PATH"; break; fi
    done
  fi
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"
    echo "build failed: see $OUT/build.log"
    return 1
  fi
  grep -i "building _C" "$OUT/build.log" || true
  $PY - <<'EOF' 2>&1 | tee -a "$OUT/build.log"
import sys

from fcos_fast import _extension, ops
from fcos_fast.ops._dispatch import OP_NAMES

print("backends on cuda:", ops.available_backends("cuda"))
missing = [op for op in OP_NAMES if not _extension.native_has_kernel(op, "cuda")]
if missing:
    sys.exit(f"FAIL: a GPU is visible but fcos_fast._C has no CUDA kernel for {missing} "
             f"({_extension.NATIVE_ERROR or 'built without CUDA: is nvcc on PATH?'})")
if "triton" not in ops.available_backends("cuda"):
    sys.exit("FAIL: the triton backend cannot run on this GPU")
EOF
  return "${PIPESTATUS[0]}"
}

step_pytest() {
  local rc
  $PY -m pytest -m cuda -rA -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" tests \
    > "$OUT/pytest_cuda.log" 2>&1
  rc=$?
  tail -25 "$OUT/pytest_cuda.log"
  $PY - "$OUT/pytest_cuda.xml" "$rc" <<'EOF' 2>&1 | tee "$OUT/pytest_cuda_outcomes.txt"
"""Every `cuda` test must have run and passed: skips, failures, errors and an empty run
fail the step; a failure that is only a missing optional tool is listed as not run."""
import importlib.util
import sys
import xml.etree.ElementTree as ET

path, pytest_rc = sys.argv[1], int(sys.argv[2])
OPTIONAL = [m for m in ("pycocotools", "expecttest") if importlib.util.find_spec(m) is None]
try:
    cases = list(ET.parse(path).getroot().iter("testcase"))
except (OSError, ET.ParseError) as error:
    sys.exit(f"FAIL: no JUnit XML from pytest ({error}); pytest exit status {pytest_rc}")
outcomes = {"passed": [], "xfailed": [], "skipped": [], "failed": [], "not run": []}
for case in cases:
    name = f"{case.get('classname')}::{case.get('name')}"
    problem = case.find("failure")
    if problem is None:
        problem = case.find("error")
    skipped = case.find("skipped")
    if problem is not None:
        text = (problem.get("message") or "") + (problem.text or "")
        needs = [m for m in OPTIONAL if f"No module named '{m}'" in text]
        if needs:
            outcomes["not run"].append(f"{name}  (needs {needs[0]}, not installed)")
        else:
            outcomes["failed"].append(f"{name}  {(problem.get('message') or '')[:200]}")
    elif skipped is not None:
        kind = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        outcomes[kind].append(f"{name}  {skipped.get('message') or ''}")
    else:
        outcomes["passed"].append(name)
for kind in ("failed", "skipped", "not run", "xfailed"):
    for line in outcomes[kind]:
        print(f"{kind.upper()}: {line}")
print(", ".join(f"{len(v)} {k}" for k, v in outcomes.items()))
problems = []
if pytest_rc not in (0, 1):
    problems.append(f"pytest exited with {pytest_rc} (collection error or interrupted run)")
if outcomes["failed"]:
    problems.append(f"{len(outcomes['failed'])} cuda tests failed")
if outcomes["skipped"]:
    problems.append(f"{len(outcomes['skipped'])} cuda tests were skipped on a GPU machine")
if not outcomes["passed"]:
    problems.append("no cuda test passed")
if pytest_rc == 1 and not outcomes["failed"] and not outcomes["not run"]:
    problems.append("pytest reported a failure the XML does not show")
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
not_run = len(outcomes["not run"])
print("cuda tests: every one that ran passed, none skipped"
      + (f" ({not_run} not run: optional tools missing)" if not_run else ""))
EOF
  return "${PIPESTATUS[0]}"
}

SANITIZER_RUNS=()  # "pid tool backend"

# Starts the six compute-sanitizer runs in the background: they check memory and
# synchronisation, not speed, so they share the GPU with pytest.
start_sanitizers() {
  local sanitizer backend tool log
  sanitizer=$(command -v compute-sanitizer \
              || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -z "$sanitizer" ]; then
    echo "compute-sanitizer not found"
    return 1
  fi
  echo "compute-sanitizer: $sanitizer ($("$sanitizer" --version | tail -1))"
  for backend in native triton; do
    for tool in memcheck racecheck synccheck; do
      log="$OUT/sanitizer_${tool}_${backend}.log"
      (
        start=$(date +%s%N)
        # memcheck without the caching allocator: a tensor's end is an allocation's end.
        if [ "$tool" = memcheck ]; then export PYTORCH_NO_CUDA_MEMORY_CACHING=1; fi
        FCOS_FAST_BACKEND=$backend timeout "$SANITIZER_TIMEOUT_S" \
          "$sanitizer" --tool "$tool" --error-exitcode 9 --report-api-errors no \
          $PY scripts/cuda_smoke.py > "$log" 2>&1
        rc=$?
        echo "$(elapsed_s "$start") $rc" > "$log.status"
        exit "$rc"
      ) &
      SANITIZER_RUNS+=("$! $tool $backend")
    done
  done
}

step_sanitizers() {
  local run pid tool backend log rc seconds summary failed=0
  if [ "${#SANITIZER_RUNS[@]}" -eq 0 ]; then
    echo "FAIL: no sanitizer run was started (compute-sanitizer not found?)"
    return 1
  fi
  for run in "${SANITIZER_RUNS[@]}"; do
    read -r pid tool backend <<< "$run"
    wait "$pid"
    rc=$?
    log="$OUT/sanitizer_${tool}_${backend}.log"
    read -r seconds _ 2>/dev/null < "$log.status" || seconds="?"
    printf 'sanitizer %s %s\t%s\n' "$tool" "$backend" "$seconds" >> "$OUT/timing.tsv"
    summary=$(grep -h "ERROR SUMMARY" "$log" | tail -1)
    if [ "$rc" -eq 0 ] && grep -q "cuda smoke ($backend): fcos_assign ok" "$log"; then
      echo "$tool $backend: clean in ${seconds}s (${summary:-no summary line})"
    else
      [ "$rc" -eq 124 ] && summary="timed out after ${SANITIZER_TIMEOUT_S}s"
      echo "$tool $backend: FAILED, exit $rc in ${seconds}s (${summary:-see log}): $log"
      tail -20 "$log"
      failed=1
    fi
  done
  return "$failed"
}

step_benchmarks() {
  local rc
  $PY -m benchmarks.run --quick --results-dir "$OUT" --no-readme > "$OUT/bench.log" 2>&1
  rc=$?
  tail -30 "$OUT/bench.log"
  return "$rc"
}

step_export() {
  local rc
  if (( ($(date +%s%N) - check_start) / 1000000000 > BUDGET_S - 120 )); then
    echo "under 2 minutes of the budget left: export latency not measured"
    return 0
  fi
  $PY -m benchmarks.bench_export --quick --sizes 512 --batches 1 8 --results-dir "$OUT/export" \
    --no-readme > "$OUT/export.log" 2>&1
  rc=$?
  tail -12 "$OUT/export.log"
  return "$rc"
}

# ----------------------------------------------------------------- the check

run_step environment step_environment
if ! gpu_visible_to_torch; then
  if gpu_visible_to_driver; then
    echo "FAIL: nvidia-smi lists a GPU but torch cannot use it (see $OUT/env.log)" \
      | tee -a "$OUT/summary.txt"
    finish 1
  fi
  echo "no CUDA GPU visible: nothing to check here (the CPU tests are \`make test\`)" \
    | tee -a "$OUT/summary.txt"
  finish 2
fi
run_step tools step_tools
if run_step build step_build; then
  start_sanitizers
  run_step pytest step_pytest
  run_step sanitizers step_sanitizers  # the time waited for them after pytest
  run_step benchmarks step_benchmarks  # alone on the GPU
  run_step export step_export
fi
finish "$status"
