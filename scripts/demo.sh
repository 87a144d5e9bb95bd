#!/usr/bin/env bash
# The demo: train FCOS on the built-in synthetic shapes with the default config (within
# 10 minutes on a 2-core CPU), then draw detections on validation images and plot the
# training curves.
#
#   scripts/demo.sh [OUT_DIR]        (default runs/demo; PYTHON picks the interpreter)
#
# Writes OUT_DIR/metrics.json, OUT_DIR/checkpoint.pt, OUT_DIR/pictures/{*.png,grid.png,
# detections.json} and OUT_DIR/curves.png.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${1:-runs/demo}
# Idle OpenMP threads sleep instead of spinning: on a few cores shared with other work,
# spinning threads stall each other at every barrier (a training step measured 4-5x
# slower on 2 shared cores); on idle cores it costs little.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

"$PYTHON" -m fcos_fast.train --out "$OUT"
"$PYTHON" -m fcos_fast.infer --checkpoint "$OUT/checkpoint.pt" --split val --num-images 8 \
    --out "$OUT/pictures"
"$PYTHON" -m fcos_fast.visualize "$OUT"
