"""Images per second of evaluation, float32 against ``--precision auto``, in one run.

    python -m benchmarks.bench_eval [--quick] [--checkpoint FILE] [--images N]
                                    [--no-readme] [--results-dir DIR]

What is timed is ``fcos_fast.engine.evaluation.evaluate`` end to end, as ``python -m
fcos_fast.evaluate`` runs it: data loading, the network, post-processing and
pycocotools' COCOeval, at two shapes:

* ``default``: the default run's network (``synthetic.yaml``: ResNet-18, FPN 128,
  3 classes, 192 px images, batch 8). With ``--checkpoint`` (``make demo`` writes
  ``runs/demo/checkpoint.pt``; ``make bench`` passes it when it is there), that trained
  model on its validation split (300 images); without, random weights on random images.
* ``voc_r18``: ``voc_r18.yaml``'s network (ResNet-18, FPN 128, 20 classes, images
  resized to 512 px, batch 16) on random 375x500 images (a typical VOC size) with random
  weights: no VOC data or model needed.

Each precision's model is prepared as the command prepares it (``auto``: bfloat16
autocast and a channels-last backbone on an AVX512-BF16/AMX CPU, float32 elsewhere), one
batch runs as warm-up, then the whole evaluation is timed. Random weights leave every
point above the score threshold, so each image yields ``detections_per_img`` (100)
detections: post-processing and COCOeval at their heaviest, the network's share (what
the precision changes) at its smallest. Rows (the harness's format) are appended to
``benchmarks/results/eval/<device>.json``; ``<device>.md`` gets the table of this run
(speed-up = float32's seconds / these, same run) and README.md's block is refreshed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import device_name, save_run, versions
from fcos_fast.config import load_config
from fcos_fast.data import DetectionDataset, build_dataset
from fcos_fast.data.common import make_target, quiet_coco
from fcos_fast.engine.build import build_model, load_trained_model
from fcos_fast.engine.evaluation import evaluate, inference
from fcos_fast.engine.precision import (inference_precision, resolve_precision,
                                        set_inference_memory_format)

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "eval"
README = Path(__file__).resolve().parent.parent / "README.md"
README_BEGIN = "<!-- eval-throughput:begin -->"
README_END = "<!-- eval-throughput:end -->"


class RandomImages(DetectionDataset):
    """``count`` random ``height x width`` images with one to six random boxes each, made
    on the fly (a pure function of the index), with their COCO ground truth."""

    def __init__(self, count: int, height: int, width: int, num_classes: int) -> None:
        self.height, self.width = height, width
        self.class_names = [f"class{label}" for label in range(num_classes)]
        self.label_to_category_id = list(range(1, num_classes + 1))
        self.image_ids = list(range(1, count + 1))
        self._objects = [self._draw_objects(index) for index in range(count)]

    def _draw_objects(self, index: int) -> tuple[list[list[float]], list[int]]:
        generator = torch.Generator().manual_seed(10_000 + index)
        count = int(torch.randint(1, 7, (1,), generator=generator))
        extent = torch.tensor([self.width, self.height], dtype=torch.float64)
        corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent * 0.7
        size = (torch.rand(count, 2, generator=generator, dtype=torch.float64) * 0.25 + 0.05) \
            * extent
        boxes = torch.cat([corner, torch.minimum(corner + size, extent)], dim=1).floor()
        labels = torch.randint(len(self.class_names), (count,), generator=generator)
        return boxes.tolist(), labels.tolist()

    def load(self, index: int):
        generator = torch.Generator().manual_seed(index)
        image = torch.rand(3, self.height, self.width, generator=generator)
        boxes, labels = self._objects[index]
        return image, make_target(boxes, labels, self.image_ids[index])

    def coco_gt(self):
        annotations = []
        for image_id, (boxes, labels) in zip(self.image_ids, self._objects):
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": self.label_to_category_id[label],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        return quiet_coco({
            "images": [{"id": i, "width": self.width, "height": self.height}
                       for i in self.image_ids],
            "annotations": annotations,
            "categories": [{"id": c, "name": n}
                           for c, n in zip(self.label_to_category_id, self.class_names)]})


def shapes(checkpoint: Path | None, images: dict[str, int], device: torch.device):
    """``(name, description, model, dataset, batch size, solver.channels_last)`` per shape."""
    torch.manual_seed(0)
    if checkpoint is not None:
        model, config, _ = load_trained_model(checkpoint, device=device)
        dataset = build_dataset(config, config.data.val_split)
        what = f"{checkpoint} on its {config.data.val_split} split"
    else:
        config = load_config("synthetic.yaml")
        model = build_model(config, 3, load_backbone_weights=False).to(device).eval()
        dataset = RandomImages(images["default"], 192, 192, 3)
        what = "random weights, random 192x192 images"
    yield ("default", f"synthetic.yaml, {what}", model, dataset,
           config.train.eval_batch_size, config.solver.channels_last)
    config = load_config("voc_r18.yaml")
    model = build_model(config, 20, load_backbone_weights=False).to(device).eval()
    yield ("voc_r18", "voc_r18.yaml (20 classes, 512 px), random weights, random 375x500 "
           "images", model, RandomImages(images["voc_r18"], 375, 500, 20),
           config.train.eval_batch_size, config.solver.channels_last)


def time_evaluation(model, dataset, batch_size: int, precision, device: torch.device
                    ) -> tuple[float, dict]:
    """Seconds of one ``evaluate`` (after one batch of warm-up) and its metrics."""
    warm_up = torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset))))
    inference(model, warm_up, batch_size=batch_size, device=device, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    metrics, _ = evaluate(model, dataset, batch_size=batch_size, device=device,
                          precision=precision)
    return time.perf_counter() - start, metrics


def markdown(rows: list[dict], descriptions: dict[str, str]) -> str:
    run = rows[0]
    lines = [f"**{run['device']}** — run {run['run']} ({run['version']}). One evaluation "
             "each (data, network, post-processing, COCOeval) after one batch of warm-up; "
             "speed-up = float32's seconds / these, same run.", ""]
    lines += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    lines += ["", "| shape | precision | images | seconds | images/s | speed-up | mAP | mAP@0.5 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {row["size"]: row["seconds"] for row in rows if row["backend"] == "fp32"}
    for row in rows:
        speedup = ("baseline" if row["backend"] == "fp32"
                   else f"**{base[row['size']] / row['seconds']:.2f}×**")
        lines.append(f"| {row['size']} | {row['precision']} | {row['images']} | "
                     f"{row['seconds']:.1f} | {row['median']:.1f} | {speedup} | "
                     f"{row['mAP']:.4f} | {row['mAP50']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="16 random images per shape (ignores --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained default run (e.g. runs/demo/checkpoint.pt)")
    parser.add_argument("--images", type=int, nargs=2, default=[300, 128],
                        metavar=("DEFAULT", "VOC"), help="random images per shape")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    counts = dict(zip(("default", "voc_r18"), [16, 16] if args.quick else args.images))
    checkpoint = None if args.quick else args.checkpoint
    precisions = [resolve_precision("fp32", device), inference_precision("auto", device)]
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    label, version = device_name(device), versions()
    rows, descriptions = [], {}
    for name, description, model, dataset, batch, setting in shapes(checkpoint, counts, device):
        descriptions[name] = f"{description}, batch {batch}"
        for index, precision in enumerate(precisions):
            channels_last = set_inference_memory_format(model, precision, setting)
            seconds, metrics = time_evaluation(model, dataset, batch, precision, device)
            rows.append({"op": "evaluate", "backend": "fp32" if index == 0 else "auto",
                         "precision": precision.name + (", channels-last" if channels_last
                                                        else ""), "mode": device.type,
                         "metric": "throughput", "unit": "images/s", "size": name,
                         "median": len(dataset) / seconds, "q20": len(dataset) / seconds,
                         "q80": len(dataset) / seconds, "seconds": seconds,
                         "images": len(dataset), "mAP": metrics["mAP"],
                         "mAP50": metrics["mAP50"], "device": label, "version": version,
                         "run": run_id})
            print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, descriptions)
    print(table)
    save_run(rows, table, args.results_dir, label, readme_block=(
        None if args.no_readme or args.results_dir != RESULTS_DIR
        else (README, README_BEGIN, README_END)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
