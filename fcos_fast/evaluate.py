"""Evaluate a checkpoint: ``python -m fcos_fast.evaluate --checkpoint FILE [--config FILE]``.

Prints the pycocotools table and the per-class APs, and writes ``metrics.json`` (``mAP``,
``mAP50``, ``mAP75``, per-class AP, the dataset's categories; VOC adds ``voc_mAP50``;
strict JSON, ``null`` for an AP without ground truth) into ``--out`` (default: an
``eval-<split>`` folder beside the checkpoint). The config stored in the checkpoint is used
unless ``--config`` is given; ``--set`` overrides either. Runs under ``torchrun`` too.

The checkpoint's classes must be the dataset's, by name and category id, in order: if they
are not, it stops before any inference, with one line saying which differ.

``--precision`` (default ``auto``: bfloat16 autocast where the CPU or GPU executes it
natively, float16 on older GPUs, else float32; ``fp32``, ``bf16``, ``fp16`` force one)
is the precision of the network, as in training; the backbone runs channels-last on the
CPU under bfloat16. The precision is printed and recorded in ``metrics.json``.

``--torchvision-checkpoint FILE`` evaluates a torchvision ``fcos_resnet50_fpn`` state dict
instead (its published COCO weights: box AP 39.2 on val2017) with the config
``coco_r50_1x.yaml`` unless ``--config`` names another: the config gives the data, the
test-time resize and the post-processing (``--set model.score_thresh=0.2`` is
torchvision's own). Its labels, COCO category ids, are mapped to the dataset's labels;
the dataset's categories must be COCO's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcos_fast.data import build_dataset
from fcos_fast.engine.cli import (add_model_arguments, add_precision_argument,
                                  inference_setup, load_detector, model_config,
                                  report_user_errors, resolve_device)
from fcos_fast.engine.distributed import cleanup, init_distributed, is_main_process
from fcos_fast.engine.evaluation import evaluate
from fcos_fast.engine.hooks import write_metrics
from fcos_fast.engine.precision import inference_precision
from fcos_fast.model.torchvision_compat import CategoryRelabel, coco_category_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--split", default=None, help="split (default: data.val_split)")
    parser.add_argument("--out", default=None, help="folder for metrics.json")
    parser.add_argument("--no-progress", action="store_true")
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    config = model_config(args)
    split = args.split or config.data.val_split
    checkpoint = Path(args.checkpoint or args.torchvision_checkpoint)
    device = init_distributed(resolve_device(config.train.device))
    try:
        precision = inference_precision(args.precision, device)
        model, config, categories = load_detector(args, config, device)
        how = inference_setup(model, precision, config)
        dataset = build_dataset(config, split)
        if args.checkpoint is not None:
            dataset.require_categories(categories, f"checkpoint {checkpoint}")
        if args.torchvision_checkpoint is not None:
            model = CategoryRelabel(model, coco_category_labels(dataset.label_to_category_id,
                                                                dataset.class_names))
        metrics, report = evaluate(model, dataset, batch_size=config.train.eval_batch_size,
                                   device=device, num_workers=config.data.num_workers,
                                   progress=not args.no_progress, precision=precision)
        if is_main_process():
            out = Path(args.out) if args.out else checkpoint.parent / f"eval-{split}"
            print(how)
            print(report, end="")
            write_metrics({**metrics, "checkpoint": str(checkpoint), "split": split},
                          out / "metrics.json")
            print(f"metrics written to {out / 'metrics.json'}")
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
