"""Train FCOS: ``python -m fcos_fast.train [--config FILE] [--out DIR] [--resume]``.

With no arguments it trains on the built-in synthetic shapes (generated on first use)
with the shipped ``synthetic.yaml``, sized to finish within 5 minutes on a 2-core CPU.
Several processes: ``torchrun --nproc_per_node N -m fcos_fast.train ...`` (DDP; NCCL on
GPUs, gloo on CPUs).

The output folder receives ``config.yaml``, ``checkpoint.pt`` (written atomically, the
one it replaces kept as ``checkpoint.previous.pt``; ``--resume`` continues from it exactly,
or from the previous one if it cannot be read), ``metrics.jsonl`` and ``tensorboard/`` (losses,
LR, mAP), ``log.txt``, and at the end ``metrics.json`` with the evaluation on the
validation split.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcos_fast.config import DEFAULT_CONFIG, Config, ConfigError, SolverConfig, load_config
from fcos_fast.data import build_dataset, build_train_transform, train_loader
from fcos_fast.engine.build import build_model, build_optimizer, build_schedule
from fcos_fast.engine.checkpoint import previous_path
from fcos_fast.engine.cli import report_user_errors, resolve_device, setup_logging
from fcos_fast.engine.distributed import (barrier, cleanup, get_rank, get_world_size,
                                          init_distributed, is_distributed, is_main_process)
from fcos_fast.engine.evaluation import evaluate
from fcos_fast.engine.precision import resolve_precision, use_channels_last
from fcos_fast.engine.hooks import (Checkpointer, EvalHook, LRScheduler, MetricsWriter,
                                    PeriodicCheckpointer, TimeBudget)
from fcos_fast.engine.schedule import build_scheduler
from fcos_fast.engine.trainer import Trainer
from fcos_fast.model.backbone import backbone_weights_file

logger = logging.getLogger("fcos_fast")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_datasets(config: Config):
    """Train and validation sets; rank 0 builds first (it may generate the synthetic set)."""
    sets = None
    if is_main_process():
        sets = (build_dataset(config, config.data.train_split, train=True),
                build_dataset(config, config.data.val_split))
    barrier()
    if sets is None:
        sets = (build_dataset(config, config.data.train_split, train=True),
                build_dataset(config, config.data.val_split))
    return sets


def _fetch_backbone_weights(config: Config) -> None:
    """Find the backbone weights, downloading them on rank 0 first if they are named and
    not cached yet, before the data is read: a missing file is reported at once."""
    if config.model.backbone_weights is not None:
        if is_main_process():
            backbone_weights_file(config.model.backbone, config.model.backbone_weights)
        barrier()


def _sync_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every process (each updated its own)."""
    if is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def _trim_log(path: Path, iteration: int) -> None:
    """Drop ``metrics.jsonl`` lines past ``iteration`` (left by the run being resumed)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if line and json.loads(line)["iter"] <= iteration]
        path.write_text("".join(line + "\n" for line in lines))


def _log_schedule(given: SolverConfig, solver: SolverConfig, num_images: int) -> None:
    """The schedule in iterations, and how it came from epochs where it was given in them."""
    epochs = ""
    if given.max_epochs or given.steps_epochs or given.warmup_epochs:
        epochs = (f" ({num_images} images / batch {solver.batch_size} = "
                  f"{num_images / solver.batch_size:.1f} iterations per epoch)")
    logger.info("schedule: %d iterations, %s LR %g, steps %s, warm-up %d%s",
                solver.max_iters, solver.lr_schedule, solver.base_lr, solver.steps,
                solver.warmup_iters, epochs)


def run(config: Config, out_dir: str | Path, *, resume: bool = False,
        started_at: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``out_dir``; returns the final metrics."""
    started_at = time.time() if started_at is None else started_at
    out_dir = Path(out_dir)
    device = init_distributed(resolve_device(config.train.device))
    threads = torch.get_num_threads()
    try:
        if is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        setup_logging(out_dir)
        return _train(config, out_dir, device, resume=resume, started_at=started_at,
                      progress=progress)
    finally:
        torch.set_num_threads(threads)
        cleanup()


def _train(config: Config, out_dir: Path, device: torch.device, *, resume: bool,
           started_at: float, progress: bool) -> dict[str, Any]:
    solver, world_size = config.solver, get_world_size()
    if solver.batch_size % world_size:
        raise ConfigError(f"solver.batch_size ({solver.batch_size}) must be a multiple of the "
                          f"number of processes ({world_size})")
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    _seed_everything(config.train.seed)
    checkpoint_path = out_dir / "checkpoint.pt"
    if resume and not (checkpoint_path.is_file() or previous_path(checkpoint_path).is_file()):
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}; train without "
                                f"--resume to start a new run there")

    _fetch_backbone_weights(config)
    train_set, val_set = _build_datasets(config)
    logger.info("data: %s, %d training and %d validation images, classes %s",
                config.data.dataset, len(train_set), len(val_set), train_set.class_names)
    solver = solver.in_iterations(len(train_set))
    _log_schedule(config.solver, solver, len(train_set))

    model = build_model(config, train_set.num_classes).to(device)
    if use_channels_last(solver.channels_last, device):
        model.backbone.to(memory_format=torch.channels_last)
    if world_size > 1 and config.model.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(config, model)
    schedule = build_schedule(config, len(train_set))
    scheduler = build_scheduler(optimizer, schedule)
    precision = resolve_precision(solver.amp, device)
    logger.info("precision: %s (%s)", precision.name, precision.reason)
    scaler = precision.grad_scaler()
    checkpointer = Checkpointer(model, optimizer, scheduler, scaler, extra={
        "config": config.to_dict(), "class_names": train_set.class_names,
        "label_to_category_id": train_set.label_to_category_id})

    start_iter, max_iter = 0, solver.max_iters
    if resume:
        start_iter, max_iter = checkpointer.resume(checkpoint_path)
    elif checkpoint_path.exists():
        logger.warning("%s exists and will be overwritten (--resume continues it)",
                       checkpoint_path)
    if is_main_process():
        (out_dir / "config.yaml").write_text(config.to_yaml())
        if resume:
            _trim_log(out_dir / "metrics.jsonl", start_iter)
        else:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)

    trained_model: nn.Module = model
    if world_size > 1:
        trained_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    batch_per_process = solver.batch_size // world_size
    data = train_loader(train_set, build_train_transform(config), batch_size=batch_per_process,
                        seed=config.train.seed, rank=get_rank(), world_size=world_size,
                        start_iter=start_iter, num_workers=config.data.num_workers)
    trainer = Trainer(trained_model, optimizer, data, max_iter=max_iter, start_iter=start_iter,
                      device=device, precision=precision, scaler=scaler,
                      clip_grad_norm=solver.clip_grad_norm)

    # Evaluation runs at the training precision, on the model as it trains (its backbone
    # already in the training memory format).
    logger.info("evaluation precision: %s (the training precision)", precision.name)

    def run_evaluation():
        _sync_buffers(model)
        return evaluate(model, val_set, batch_size=config.train.eval_batch_size, device=device,
                        num_workers=config.data.num_workers, progress=progress,
                        precision=precision)

    writer = MetricsWriter(out_dir, config.train.log_period, progress=progress)
    budget = None
    if solver.max_minutes is not None:
        eval_steps = 0.5 * len(val_set) / solver.batch_size
        budget = TimeBudget(solver.max_minutes * 60, started_at, schedule, eval_steps=eval_steps)
    evaluation = EvalHook(run_evaluation, out_dir, config.train.eval_period, writer)
    trainer.register_hooks([
        LRScheduler(scheduler),
        budget,
        PeriodicCheckpointer(checkpointer, out_dir, config.train.checkpoint_period),
        evaluation,
        writer,
    ])
    trainer.train()

    metrics = evaluation.metrics
    logger.info("done in %.1f min: mAP %.4f, mAP50 %.4f; metrics in %s",
                (time.time() - started_at) / 60, metrics["mAP"], metrics["mAP50"],
                out_dir / "metrics.json")
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"YAML config file or the name of a shipped one "
                             f"(default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/checkpoint.pt")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. solver.max_iters=100 (replaces a "
                             "max_epochs of the config)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started_at = time.time()
    args = parse_args(argv)

    def command() -> int:
        config = load_config(args.config, args.set)
        out = args.out or str(Path("runs") / Path(args.config or DEFAULT_CONFIG).stem)
        run(config, out, resume=args.resume, started_at=started_at,
            progress=not args.no_progress)
        return 0

    return report_user_errors(command)


if __name__ == "__main__":
    sys.exit(main())
