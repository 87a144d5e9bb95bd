#!/usr/bin/env bash
# The whole GPU check in one command, for whoever gets a machine with a CUDA GPU:
#
#     bash scripts/gpu_check.sh [--budget-s 480] OUTDIR
#     bash scripts/gpu_check.sh --rehearse OUTDIR      # every step's own code, on the CPU
#
# In order, most valuable answers first, within one time budget (default 8 minutes):
# environment, tools (from ./wheels when missing), build for the visible GPU, pytest -m
# cuda, compute-sanitizer memcheck of every op (native and Triton), the op benchmarks,
# racecheck, synccheck, the export latency. One screen of summary at the end (also
# OUTDIR/summary.txt); every log in OUTDIR. scripts/gpu_check.py says the rest.
#
# Exit status: 0 every step passed (or, rehearsing, every step rehearsed); 1 otherwise;
# 2 no CUDA GPU is visible (the CPU checks are `make test`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PY" scripts/gpu_check.py "$@"
