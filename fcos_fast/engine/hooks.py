"""Hooks of the training loop: LR schedule, time budget, checkpoints, evaluation, logging.

Each is a ``HookBase`` (``fcos_fast.engine.trainer``). Register them in this order —
``TimeBudget``, ``LRScheduler``, ``PeriodicCheckpointer``, ``EvalHook``, ``MetricsWriter``
— so that the LR of the step after a shortening is already the shortened schedule's, at
the end of training the last checkpoint is on disk before the final evaluation, and the
writers close last.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fcos_fast.engine.atomic import strict_json, write_json
from fcos_fast.engine.checkpoint import (load_weights, rng_state, save_checkpoint,
                                        set_rng_state)
from fcos_fast.engine.distributed import (all_gather_objects, broadcast_object, get_rank,
                                          get_world_size, is_distributed, is_main_process)
from fcos_fast.engine.schedule import WarmupSchedule
from fcos_fast.engine.trainer import HookBase

logger = logging.getLogger(__name__)


class LRScheduler(HookBase):
    """Steps a ``torch.optim.lr_scheduler`` after every step."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class TimeBudget(HookBase):
    """Shortens the run so that the whole command ends within ``max_seconds``.

    From the median time of the recent steps, it predicts when the remaining steps, the
    periodic evaluations among them and the final evaluation will end (an evaluation costs
    what the last one took, or ``eval_steps`` steps before there was one). Whenever that
    is past the budget, it moves ``max_iter``
    earlier and compresses the LR schedule to end there (so a shortened run still anneals
    its learning rate), never lengthening either. If not even one more step fits, it stops
    the run. Rank 0 decides for every process. Register it before ``LRScheduler``, so
    that the step after a shortening already takes its LR from the compressed schedule.

    Args:
        max_seconds: budget of the whole command, counted from ``started_at``.
        started_at: ``time.time()`` when the command started (data preparation included).
        schedule: the LR schedule to compress.
        eval_steps: cost of an evaluation, in training steps (e.g. half the number of
            validation batches: inference is about half a training step per image), until
            one has been timed.
        evaluation: the hook that evaluates every ``evaluation.period`` steps (its
            ``last_seconds`` times an evaluation); None: only the final one, at
            ``eval_steps``.
        reserve_seconds: fixed time kept for checkpoint writing, COCOeval and exit.
        check_period: re-plan every this many steps, after ``warmup_steps`` measured ones.
    """

    def __init__(self, max_seconds: float, started_at: float, schedule: WarmupSchedule, *,
                 eval_steps: float = 0.0, evaluation: EvalHook | None = None,
                 reserve_seconds: float = 15.0, check_period: int = 10,
                 warmup_steps: int = 5) -> None:
        self.max_seconds, self.started_at, self.schedule = max_seconds, started_at, schedule
        self.eval_steps, self.evaluation, self.reserve_seconds = eval_steps, evaluation, reserve_seconds
        self.check_period, self.warmup_steps = check_period, warmup_steps
        self._times: deque[float] = deque(maxlen=50)

    def before_train(self) -> None:
        self._last = time.perf_counter()

    def after_step(self) -> None:
        # The whole iteration (data, step, every hook) is what the remaining ones will cost.
        now = time.perf_counter()
        self._times.append(now - self._last)
        self._last = now
        trainer = self.trainer
        done = trainer.iter - trainer.start_iter
        if done < self.warmup_steps or done % self.check_period:
            return
        plan = None
        if is_main_process():
            fits = self._iterations_that_fit(statistics.median(self._times))
            if fits < trainer.max_iter:
                # 2% short of what fits, so that jitter in the step time does not make
                # every later check shorten the run again by a step or two.
                plan = trainer.iter + math.floor(0.98 * (fits - trainer.iter))
        plan = broadcast_object(plan)
        if plan is None:
            return
        if plan <= trainer.iter:
            logger.warning("time budget of %.1f min reached: stopping at iteration %d",
                           self.max_seconds / 60, trainer.iter)
            trainer.stop_requested = True
            return
        logger.info("time budget of %.1f min: schedule shortened from %d to %d iterations",
                    self.max_seconds / 60, trainer.max_iter, plan)
        trainer.max_iter = plan
        self.schedule.shorten(plan)

    def _iterations_that_fit(self, step: float) -> int:
        """The last iteration the budget reaches at ``step`` seconds a step, the
        evaluations still to come paid for."""
        iteration = self.trainer.iter
        measured = self.evaluation.last_seconds if self.evaluation is not None else None
        evaluation = measured if measured is not None else self.eval_steps * step
        left = (self.max_seconds - (time.time() - self.started_at) - self.reserve_seconds
                - evaluation)
        period = self.evaluation.period if self.evaluation is not None else 0

        def cost(end: int) -> float:  # of the steps to ``end`` and the evaluations among them
            periodic = max(0, (end - 1) // period - iteration // period) if period > 0 else 0
            return (end - iteration) * step + periodic * evaluation

        low, high = iteration, iteration + max(0, math.floor(left / step))
        while low < high:  # the last end whose cost fits (cost grows with the end)
            middle = (low + high + 1) // 2
            low, high = (middle, high) if cost(middle) <= left else (low, middle - 1)
        return low


class Checkpointer:
    """Saves and restores the whole training state (see ``fcos_fast.engine.checkpoint``).

    Args:
        model: the model (unwrapped from DDP).
        optimizer, scheduler, scaler: their states are saved.
        extra: plain data stored as is (config, class names, ...).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler, extra: dict[str, Any] | None = None) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.extra = extra or {}

    def save(self, path: str | Path, *, iteration: int, max_iter: int) -> None:
        """Write the checkpoint (rank 0), with every process's RNG states. Collective."""
        states = all_gather_objects(rng_state())
        if is_main_process():
            save_checkpoint({
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": iteration,
                "max_iter": max_iter,
                "rng": states,
                **self.extra,
            }, path)

    def restore(self, state: dict[str, Any], path: str | Path, hint: str = "") -> tuple[int, int]:
        """Restore everything from the checkpoint ``state`` read from ``path``; returns
        ``(iteration, max_iter)``. Weights of another architecture raise
        ``CheckpointError`` naming the first parameter that does not fit (``hint``
        appended)."""
        load_weights(self.model, state["model"], path, hint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        states = state["rng"]
        if len(states) == get_world_size():
            set_rng_state(states[get_rank()])
        else:
            logger.warning("checkpoint %s was written by %d processes, not %d: RNG states "
                           "not restored", path, len(states), get_world_size())
        logger.info("resumed from %s at iteration %d of %d", path, state["iteration"],
                    state["max_iter"])
        return state["iteration"], state["max_iter"]


class PeriodicCheckpointer(HookBase):
    """Saves ``<out_dir>/checkpoint.pt`` every ``period`` steps and at the end (the one it
    replaces stays as ``checkpoint.previous.pt``)."""

    def __init__(self, checkpointer: Checkpointer, out_dir: str | Path, period: int) -> None:
        self.checkpointer, self.path, self.period = checkpointer, Path(out_dir) / "checkpoint.pt", period

    def _save(self) -> None:
        self.checkpointer.save(self.path, iteration=self.trainer.iter,
                               max_iter=self.trainer.max_iter)

    def after_step(self) -> None:
        if self.period > 0 and self.trainer.iter % self.period == 0 \
                and self.trainer.iter < self.trainer.max_iter:
            self._save()

    def after_train(self) -> None:
        self._save()
        logger.info("checkpoint written to %s", self.path)


class MetricsWriter(HookBase):
    """Progress bar, log lines, TensorBoard scalars and ``metrics.jsonl`` lines (rank 0).

    Every ``period`` steps: each loss and their sum (averaged over processes), the
    learning rate the step used, the step time and the number of skipped steps — in
    ``metrics.jsonl`` and TensorBoard, and as one log line (console and ``log.txt``) with
    the time per iteration and the time left, as detectron2's metrics printer writes it.
    ``write`` records other scalars (the evaluation hook's mAPs).

    TensorBoard: each fresh run writes into a folder of its own,
    ``tensorboard/run-<start time>``, so that a rerun into the same output folder is a new
    run beside the old one; a resumed run continues the newest folder, dropping what the
    interrupted run had written past the iteration it resumes from.
    """

    def __init__(self, out_dir: str | Path, period: int, *, progress: bool = True,
                 resume: bool = False) -> None:
        self.out_dir, self.period, self.progress = Path(out_dir), period, progress
        self.resume = resume
        self._bar = self._tensorboard = self._jsonl = None
        self._iteration_times: deque[float] = deque(maxlen=20)

    def tensorboard_dir(self) -> Path:
        """This run's TensorBoard folder."""
        root = self.out_dir / "tensorboard"
        runs = sorted(p for p in root.glob("run-*") if p.is_dir()) if root.is_dir() else []
        if self.resume and runs:
            return runs[-1]
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder, number = root / f"run-{stamp}", 1
        while folder.exists():  # two runs started in the same second
            number += 1
            folder = root / f"run-{stamp}-{number}"
        return folder

    def before_train(self) -> None:
        self._last = time.perf_counter()
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tensorboard = SummaryWriter(
            str(self.tensorboard_dir()),
            purge_step=self.trainer.start_iter + 1 if self.resume else None)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.progress:
            self._bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.start_iter,
                             desc="train", dynamic_ncols=True, smoothing=0.1)

    def before_step(self) -> None:
        self._step_lr = self.trainer.optimizer.param_groups[0]["lr"]  # before the scheduler steps

    def write(self, scalars: dict[str, float], iteration: int) -> None:
        if not is_main_process() or self._jsonl is None:
            return
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, iteration)
        # A skipped step's loss is NaN: null in the JSON lines.
        self._jsonl.write(json.dumps(strict_json({"iter": iteration, **scalars}),
                                     allow_nan=False) + "\n")
        self._jsonl.flush()

    def after_step(self) -> None:
        trainer = self.trainer
        now = time.perf_counter()
        self._iteration_times.append(now - self._last)
        self._last = now
        if self._bar is not None:
            if self._bar.total != trainer.max_iter:
                self._bar.total = trainer.max_iter
            self._bar.update(1)
            if trainer.iter >= trainer.max_iter or trainer.stop_requested:
                self._bar.close()  # before the final evaluation prints
        if trainer.iter % self.period and trainer.iter < trainer.max_iter \
                and not trainer.stop_requested:
            return
        names = sorted(trainer.loss_dict)
        losses = torch.stack([trainer.loss_dict[name].float() for name in names])
        if is_distributed():
            dist.all_reduce(losses)
            losses /= get_world_size()
        scalars = {f"train/{name}": float(value) for name, value in zip(names, losses)}
        scalars["train/total_loss"] = float(losses.sum())
        scalars["train/lr"] = self._step_lr
        scalars["train/step_time"] = trainer.step_time
        scalars["train/skipped_steps"] = float(trainer.skipped_steps)
        self.write(scalars, trainer.iter)
        if is_main_process():
            self._log(scalars)
        if self._bar is not None and not self._bar.disable:
            self._bar.set_postfix(loss=f"{scalars['train/total_loss']:.3f}",
                                  lr=f"{scalars['train/lr']:.2e}", refresh=False)

    def _log(self, scalars: dict[str, float]) -> None:
        """``iter 20/800  total_loss 1.234  cls_loss 0.5 ...  lr 1.00e-03  0.31 s/it  eta
        0:04:00``."""
        trainer = self.trainer
        seconds = statistics.median(self._iteration_times)
        eta = datetime.timedelta(seconds=round(seconds * (trainer.max_iter - trainer.iter)))
        losses = "  ".join(f"{name[len('train/'):]} {value:.4f}"
                           for name, value in scalars.items() if name.endswith("loss"))
        skipped = (f"  skipped {trainer.skipped_steps}" if trainer.skipped_steps else "")
        logger.info("iter %d/%d  %s  lr %.3e  %.3f s/it  eta %s%s", trainer.iter,
                    trainer.max_iter, losses, scalars["train/lr"], seconds, eta, skipped)

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._jsonl.close()


class EvalHook(HookBase):
    """Evaluates every ``period`` steps (0: never during training) and at the end.

    ``evaluate()`` returns ``(metrics, report)`` on every process. The report is printed
    (rank 0), the top-level scalar metrics go to ``writer`` as ``eval/<name>``, and the
    final metrics are written to ``<out_dir>/metrics.json``.
    """

    def __init__(self, evaluate: Callable[[], tuple[dict[str, Any], str]], out_dir: str | Path,
                 period: int = 0, writer: MetricsWriter | None = None) -> None:
        self.evaluate, self.out_dir, self.period, self.writer = evaluate, Path(out_dir), period, writer
        self.metrics: dict[str, Any] | None = None
        #: How long the last evaluation took (None before the first).
        self.last_seconds: float | None = None

    def _run(self) -> dict[str, Any]:
        start = time.perf_counter()
        metrics, report = self.evaluate()
        self.last_seconds = time.perf_counter() - start
        metrics = {**metrics, "iteration": self.trainer.iter,
                   "eval_seconds": round(self.last_seconds, 2)}
        if is_main_process():
            print(f"\nevaluation at iteration {self.trainer.iter}:\n{report}", flush=True)
        if self.writer is not None:
            self.writer.write({f"eval/{key}": value for key, value in metrics.items()
                               if isinstance(value, float) and key.startswith(("mAP", "voc"))},
                              self.trainer.iter)
        self.metrics = metrics
        return metrics

    def after_step(self) -> None:
        trainer = self.trainer
        if self.period > 0 and trainer.iter % self.period == 0 and trainer.iter < trainer.max_iter:
            self._run()

    def after_train(self) -> None:
        metrics = self._run()
        if is_main_process():
            write_metrics(metrics, self.out_dir / "metrics.json")


def write_metrics(metrics: dict[str, Any], path: str | Path) -> None:
    """``metrics.json``: strict JSON (an undefined AP is null), written atomically."""
    write_json(path, metrics)
