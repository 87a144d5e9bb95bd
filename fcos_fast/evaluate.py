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

from fcos_fast.config import Config, from_dict, load_config, merge, parse_overrides
from fcos_fast.data import DatasetError, build_dataset
from fcos_fast.engine.build import load_trained_model
from fcos_fast.engine.checkpoint import CheckpointError, load_checkpoint
from fcos_fast.engine.distributed import cleanup, init_distributed, is_main_process
from fcos_fast.engine.evaluation import evaluate
from fcos_fast.engine.hooks import write_metrics
from fcos_fast.train import resolve_device


def checkpoint_config(checkpoint: str | Path, config_file: str | None,
                      overrides: list[str]) -> Config:
    """``config_file`` (or the checkpoint's own config) with ``overrides`` applied."""
    if config_file is not None:
        return load_config(config_file, overrides)
    stored = load_checkpoint(checkpoint)["config"]
    return from_dict(merge(stored, parse_overrides(overrides)))


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

    try:
        config = checkpoint_config(args.checkpoint, args.config, args.set)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    except (DatasetError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
