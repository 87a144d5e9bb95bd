"""Evaluate a checkpoint: ``python -m fcos_fast.evaluate --checkpoint FILE [--config FILE]``.

Prints the pycocotools table and the per-class APs, and writes ``metrics.json`` (``mAP``,
``mAP50``, ``mAP75``, per-class AP; VOC adds ``voc_mAP50``) into ``--out`` (default: an
``eval-<split>`` folder beside the checkpoint). The config stored in the checkpoint is used
unless ``--config`` is given; ``--set`` overrides either. Runs under ``torchrun`` too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcos_fast.data import build_dataset
from fcos_fast.engine.build import load_trained_model
from fcos_fast.engine.cli import checkpoint_config, report_user_errors, resolve_device
from fcos_fast.engine.distributed import cleanup, init_distributed, is_main_process
from fcos_fast.engine.evaluation import evaluate
from fcos_fast.engine.hooks import write_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    parser.add_argument("--config", default=None, help="config (default: the checkpoint's)")
    parser.add_argument("--split", default=None, help="split (default: data.val_split)")
    parser.add_argument("--out", default=None, help="folder for metrics.json")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.backend=reference")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    config = checkpoint_config(args.checkpoint, args.config, args.set)
    split = args.split or config.data.val_split
    device = init_distributed(resolve_device(config.train.device))
    try:
        model, config, _ = load_trained_model(args.checkpoint, config, device=device)
        dataset = build_dataset(config, split)
        metrics, report = evaluate(model, dataset, batch_size=config.train.eval_batch_size,
                                   device=device, num_workers=config.data.num_workers,
                                   progress=not args.no_progress)
        if is_main_process():
            out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{split}"
            print(report, end="")
            write_metrics({**metrics, "checkpoint": str(args.checkpoint), "split": split},
                          out / "metrics.json")
            print(f"metrics written to {out / 'metrics.json'}")
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
