#!/usr/bin/env bash
# The demo: train FCOS on the built-in synthetic shapes with the default config (within
# 5 minutes on a 2-core CPU), report the end-to-end time and the mAP, then draw
# detections on validation images and plot the training curves.
#
#   scripts/demo.sh [OUT_DIR [KEY=VALUE ...]]
#
# OUT_DIR defaults to runs/demo; KEY=VALUE pairs are handed to the train command's --set
# (tests/test_demo.py runs the demo on a tiny network and schedule so); PYTHON picks the
# interpreter.
#
# Writes OUT_DIR/metrics.json, OUT_DIR/demo_summary.json, OUT_DIR/checkpoint.pt,
# OUT_DIR/model.pt2, OUT_DIR/pictures/{*.png,grid.png,detections.json} and
# OUT_DIR/curves.png.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${1:-runs/demo}
shift $(( $# > 0 ? 1 : 0 ))

start=$(date +%s.%N)
"$PYTHON" -m fcos_fast.train --out "$OUT" ${1:+--set "$@"}
end=$(date +%s.%N)
# The end-to-end figure the README reports: the whole train command (data generation on
# a fresh machine, training, evaluation), with the CPU/GPU it ran on.
"$PYTHON" - "$OUT" "$start" "$end" <<'PY'
import json, platform, sys, torch
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
metrics = json.load(open(f"{out}/metrics.json"))
cpu = platform.processor() or platform.machine()
try:
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
               if line.startswith("model name"))
except (OSError, StopIteration):
    pass
device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
    f"{cpu}, {torch.get_num_threads()} threads"
summary = {"seconds": round(end - start, 1), "device": device, "mAP50": metrics["mAP50"],
           "mAP": metrics["mAP"], "iterations": metrics["iteration"]}
with open(f"{out}/demo_summary.json", "w") as file:
    json.dump(summary, file, indent=2)
print(f"default run: {summary['seconds'] / 60:.1f} min end to end on {device}: "
      f"mAP@0.5 {summary['mAP50']:.3f}, mAP {summary['mAP']:.3f} "
      f"after {summary['iterations']} iterations")
PY
# The trained model as one fixed-size graph (torch.export), checked in a fresh process,
# and its mAP on the validation split beside the eager model's (~30 s).
"$PYTHON" -m fcos_fast.export --checkpoint "$OUT/checkpoint.pt" --out "$OUT/model.pt2" \
    --batch 8 --evaluate
"$PYTHON" -m fcos_fast.infer --checkpoint "$OUT/checkpoint.pt" --split val --num-images 8 \
    --score-thresh 0.5 --out "$OUT/pictures"
"$PYTHON" -m fcos_fast.visualize "$OUT"
