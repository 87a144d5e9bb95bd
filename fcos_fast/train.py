"""Train FCOS: ``python -m fcos_fast.train [--config FILE] [--out DIR] [--resume]``.

With no arguments it trains on the built-in synthetic shapes (generated on first use)
with the shipped ``synthetic.yaml``, sized to finish within 5 minutes on a 2-core CPU.
Several processes: ``torchrun --nproc_per_node N -m fcos_fast.train ...`` (DDP; NCCL on
GPUs, gloo on CPUs).

The output folder receives ``config.yaml`` (data paths made absolute), ``checkpoint.pt``
(written atomically, the one it replaces kept as ``checkpoint.previous.pt``),
``metrics.jsonl`` and ``tensorboard/run-<start time>/`` (losses, LR, mAP), ``log.txt``
(and the console: losses and LR every ``train.log_period`` iterations), and at the end
``metrics.json`` with the evaluation on the validation split.

``--resume`` continues the run in ``--out`` exactly where its checkpoint stopped (or from
the previous checkpoint if that one cannot be read), with the run's own
``<out>/config.yaml`` unless ``--config`` is given. ``--set solver.max_iters=N`` (or
``max_epochs``, or the LR steps) makes the resumed run longer or shorter: the schedule is
re-fitted from the current iteration on, and the log says how. What cannot change on
resume (the optimizer, LR, batch, warm-up, precision, the network, the classes) is
refused in one line.
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

from fcos_fast.config import (DEFAULT_CONFIG, Config, ConfigError, SolverConfig, apply_overrides,
                              from_dict, load_config, parse_overrides)
from fcos_fast.data import (DatasetError, build_dataset, build_train_transform, train_loader,
                            with_absolute_paths)
from fcos_fast.engine.atomic import write_text
from fcos_fast.engine.build import (build_model, build_optimizer, build_schedule,
                                    checkpoint_categories, model_differences)
from fcos_fast.engine.checkpoint import load_checkpoint_or_previous, previous_path
from fcos_fast.engine.cli import check_backend, report_user_errors, resolve_device, setup_logging
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
        write_text(path, "".join(line + "\n" for line in lines))


#: Solver fields a resumed run cannot change: its optimizer state and warm-up were made
#: with them.
FIXED_ON_RESUME = ("batch_size", "optimizer", "base_lr", "momentum", "weight_decay",
                   "warmup_iters", "warmup_epochs", "warmup_fraction", "warmup_factor", "amp")

#: Solver fields that, changed on resume, re-fit the schedule from the current iteration.
REFIT_ON_RESUME = ("max_iters", "max_epochs", "lr_schedule", "steps", "steps_epochs",
                   "steps_fraction", "gamma")


def run_config(config_file: str | None, overrides: list[str], out_dir: Path, *,
               resume: bool) -> Config:
    """The config of a run: ``config_file`` (default: ``DEFAULT_CONFIG``) with
    ``overrides``; with ``resume`` and no ``config_file``, the run's own
    ``<out_dir>/config.yaml`` (or the config in its checkpoint) with ``overrides``."""
    if not resume or config_file is not None:
        return load_config(config_file, overrides)
    saved = out_dir / "config.yaml"
    if saved.is_file():
        return load_config(saved, overrides)
    state, _ = _resume_state(out_dir / "checkpoint.pt")
    return from_dict(apply_overrides(state["config"], parse_overrides(overrides)))


def _resume_state(checkpoint_path: Path) -> tuple[dict[str, Any], Path]:
    if not (checkpoint_path.is_file() or previous_path(checkpoint_path).is_file()):
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}; train without "
                                f"--resume to start a new run there")
    return load_checkpoint_or_previous(checkpoint_path)


def _check_resume_changes(stored: Config, config: Config, path: Path) -> None:
    """Refuse changes a resumed run cannot honour (``FIXED_ON_RESUME``)."""
    changed = [f"solver.{name} {getattr(config.solver, name)!r} (the run has "
               f"{getattr(stored.solver, name)!r})" for name in FIXED_ON_RESUME
               if getattr(stored.solver, name) != getattr(config.solver, name)]
    if changed:
        raise ConfigError(f"--resume continues the run of {path} with its optimizer state and "
                          f"warm-up, which cannot follow {'; '.join(changed)}; start a new run "
                          f"(another --out) to change them. A resumed run can change its length "
                          f"(solver.max_iters or max_epochs) and LR steps")


def _refit_schedule(stored: Config, config: Config, solver: SolverConfig, schedule,
                    scheduler, start_iter: int, max_iter: int) -> int:
    """A resumed run's schedule: unchanged (``max_iter`` as the checkpoint says, perhaps
    shortened by a time budget) unless the config changed its length or steps; then
    re-fitted from ``start_iter`` to the new length. Returns the run's ``max_iter``."""
    if all(getattr(stored.solver, name) == getattr(config.solver, name)
           for name in REFIT_ON_RESUME):
        return max_iter
    if solver.max_iters <= start_iter:
        raise ConfigError(f"--resume: the run is at iteration {start_iter} already, and "
                          f"{_length(config.solver)} ({solver.max_iters} iterations) ends "
                          f"there or before; give a longer run to continue it")
    before = (schedule.max_iters, list(schedule.steps), scheduler.get_last_lr()[0])
    schedule.refit(solver.max_iters, solver.lr_schedule, solver.steps, solver.gamma)
    # The scheduler sets the LR after each step; the next step's is set here.
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(start_iter)
    logger.info("resume: the run of %d iterations (steps %s) is now %d (%s, steps %s) from "
                "iteration %d on; LR %.3e there (was %.3e); warm-up of %d kept",
                before[0], before[1], solver.max_iters, solver.lr_schedule, solver.steps,
                start_iter, scheduler.base_lrs[0] * schedule(start_iter), before[2],
                schedule.warmup_iters)
    return solver.max_iters


def _length(solver: SolverConfig) -> str:
    return (f"solver.max_iters {solver.max_iters}" if solver.max_iters is not None
            else f"solver.max_epochs {solver.max_epochs}")


def _empty_training_set(config: Config, train_set) -> DatasetError:
    why = (" once data.filter_empty left out the images without objects"
           if config.data.filter_empty else "")
    return DatasetError(f"the training set is empty: {train_set.source} lists no images"
                        f"{why}; there is nothing to train on")


def _log_schedule(given: SolverConfig, solver: SolverConfig, num_images: int) -> None:
    """The schedule in iterations, and how it came from epochs where it was given in them."""
    epochs = ""
    if given.needs_dataset_size():
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
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; name a folder for the run")
    device = resolve_device(config.train.device)
    check_backend(config, device)
    device = init_distributed(device)
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
    config = with_absolute_paths(config)
    if resume:
        state, resumed_from = _resume_state(checkpoint_path)
        stored = from_dict(state["config"])
        _check_resume_changes(stored, config, resumed_from)
    else:
        _fetch_backbone_weights(config)  # a resumed run has its weights
    train_set, val_set = _build_datasets(config)
    if len(train_set) == 0:
        raise _empty_training_set(config, train_set)
    if len(val_set) == 0:
        raise DatasetError(f"the validation set is empty: {val_set.source} lists no images")
    val_set.require_categories(train_set.categories, f"the training set ({train_set.source})")
    if resume:
        train_set.require_categories(checkpoint_categories(state), f"checkpoint {resumed_from}")
    logger.info("data: %s, %d training and %d validation images, classes %s",
                config.data.dataset, len(train_set), len(val_set),
                train_set.categories.describe(limit=100))
    solver = solver.in_iterations(len(train_set))
    _log_schedule(config.solver, solver, len(train_set))

    model = build_model(config, train_set.num_classes, load_backbone_weights=not resume)
    model.to(device)
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
        start_iter, max_iter = checkpointer.restore(state, resumed_from,
                                                    model_differences(state["config"], config))
        max_iter = _refit_schedule(stored, config, solver, schedule, scheduler, start_iter,
                                   max_iter)
    elif checkpoint_path.exists():
        logger.warning("%s exists and will be overwritten (--resume continues it)",
                       checkpoint_path)
    if is_main_process():
        write_text(out_dir / "config.yaml", config.to_yaml())
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

    writer = MetricsWriter(out_dir, config.train.log_period, progress=progress, resume=resume)
    evaluation = EvalHook(run_evaluation, out_dir, config.train.eval_period, writer)
    budget = None
    if solver.max_minutes is not None:
        eval_steps = 0.5 * len(val_set) / solver.batch_size
        budget = TimeBudget(solver.max_minutes * 60, started_at, schedule, eval_steps=eval_steps,
                            evaluation=evaluation)
    trainer.register_hooks([
        budget,  # before the scheduler sets the next step's LR from a shortened schedule
        LRScheduler(scheduler),
        PeriodicCheckpointer(checkpointer, out_dir, config.train.checkpoint_period),
        evaluation,
        writer,
    ])
    trainer.train()

    metrics = evaluation.metrics
    logger.info("done in %.1f min: mAP %s, mAP50 %s; metrics in %s",
                (time.time() - started_at) / 60, _score(metrics["mAP"]),
                _score(metrics["mAP50"]), out_dir / "metrics.json")
    return metrics


def _score(value: float | None) -> str:
    return "undefined (no ground truth)" if value is None else f"{value:.4f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"YAML config file or the name of a shipped one "
                             f"(default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/checkpoint.pt, with <out>/config.yaml unless "
                             "--config is given (--set solver.max_iters=N makes it longer)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. solver.max_iters=100 (replaces a "
                             "max_epochs of the config)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started_at = time.time()
    args = parse_args(argv)

    def command() -> int:
        out = Path(args.out or Path("runs") / Path(args.config or DEFAULT_CONFIG).stem)
        config = run_config(args.config, args.set, out, resume=args.resume)
        run(config, out, resume=args.resume, started_at=started_at,
            progress=not args.no_progress)
        return 0

    return report_user_errors(command)


if __name__ == "__main__":
    sys.exit(main())
