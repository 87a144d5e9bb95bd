#!/usr/bin/env bash
# The whole GPU check in one command, for whoever gets a machine with a CUDA GPU:
#
#     bash scripts/gpu_check.sh OUTDIR
#
# builds fcos_fast._C with its CUDA kernels against the torch already installed, runs the
# CUDA tests (`pytest -m cuda`), runs the native CUDA kernels under compute-sanitizer
# (memcheck) at small size, runs every benchmark suite on the GPU, and writes the results
# JSON, the markdown table, the PNG plot and the logs to OUTDIR. Wheels for missing test
# tools (pytest, hypothesis, pytest-benchmark, expecttest, pycocotools) may be put in
# ./wheels for machines with no package index.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
status=0

step() { echo; echo "=== $* ==="; }

step "environment" | tee "$OUT/env.log"
{ nvidia-smi || true; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$OUT/env.log"

step "test tools"
for module in pytest hypothesis pytest_benchmark expecttest; do
  if ! $PY -c "import $module" 2>/dev/null; then
    if [ -d wheels ]; then
      $PY -m pip install -q --no-index --find-links wheels "${module//_/-}" || true
    else
      $PY -m pip install -q "${module//_/-}" || true
    fi
  fi
done

step "build (CUDA kernels for this GPU)"
export MAX_JOBS=${MAX_JOBS:-16}
if ! $PY -m pip install --no-build-isolation --no-deps -e . 2>&1 | tee "$OUT/build.log" | tail -5; then
  echo "build failed: see $OUT/build.log"; exit 1
fi
$PY -c "from fcos_fast import ops; print('backends on cuda:', ops.available_backends('cuda'))" \
  | tee -a "$OUT/build.log"

step "pytest -m cuda"
$PY -m pytest -m cuda -q -rA tests 2>&1 | tee "$OUT/pytest_cuda.log" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck"
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SANITIZER" ]; then
  FCOS_FAST_BACKEND=native "$SANITIZER" --tool memcheck --error-exitcode 9 \
    $PY scripts/cuda_smoke.py 2>&1 | tee "$OUT/memcheck.log" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"
fi

step "benchmarks"
$PY -m benchmarks.run --results-dir "$OUT" --no-readme 2>&1 | tee "$OUT/bench.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo; echo "results in $OUT (exit $status)"
exit $status
