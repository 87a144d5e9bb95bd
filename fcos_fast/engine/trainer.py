"""The training loop: an iteration-based step with hooks around it.

The step does only what every detector's step does: take a batch, compute the model's
named losses, sum them, step back and update (with the gradient scaler and optional
clipping). Everything else — LR schedule, logging, checkpoints, evaluation, the time
budget — is a ``HookBase`` registered on the trainer (detectron2's design).

One thing belongs in the step because it decides whether there is an update at all: a
step whose total loss is not finite (on any process) is skipped, with a warning, before
``backward``, so one bad batch cannot poison the weights; too many in a row stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fcos_fast.engine.distributed import all_true
from fcos_fast.engine.precision import Precision

logger = logging.getLogger(__name__)


class HookBase:
    """Callbacks around the loop. ``self.trainer`` is set when the hook is registered.

    In ``after_step``, ``trainer.iter`` is the number of steps done (the step just run is
    ``trainer.iter - 1``). Hooks run on every process, in registration order; a hook that
    communicates between processes must do so at the same iterations on all of them.
    """

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class Trainer:
    """Runs steps from ``start_iter`` until ``max_iter`` (or until a hook sets
    ``stop_requested``).

    Args:
        model: returns a dict of scalar losses for ``model(images, targets)`` in train
            mode (possibly wrapped in ``DistributedDataParallel``).
        optimizer: updates the model's parameters.
        data: endless iterator of ``(images, targets)`` batches, positioned at
            ``start_iter``.
        max_iter: number of steps of the whole run.
        start_iter: steps already done (when resuming).
        device: where images and targets go.
        precision: autocast of the forward pass (``fcos_fast.engine.precision``); None:
            float32.
        scaler: ``torch.amp.GradScaler`` (enabled only for float16).
        clip_grad_norm: clip the gradients' total L2 norm to this; None: no clipping.
        max_consecutive_skips: after this many non-finite steps in a row, raise
            ``FloatingPointError`` (the run has diverged).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 data: Iterator[tuple[list[Tensor], list[dict[str, Any]]]], *, max_iter: int,
                 start_iter: int = 0, device: torch.device = torch.device("cpu"),
                 precision: Precision | None = None,
                 scaler: torch.amp.GradScaler | None = None,
                 clip_grad_norm: float | None = None, max_consecutive_skips: int = 10) -> None:
        self.model, self.optimizer, self.data = model, optimizer, data
        self.max_iter, self.start_iter, self.iter = max_iter, start_iter, start_iter
        self.device = device
        self.precision = precision or Precision("fp32", device.type)
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(enabled=False)
        self.clip_grad_norm = clip_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.hooks: list[HookBase] = []
        self.loss_dict: dict[str, Tensor] = {}
        self.step_skipped = False
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self.step_time = 0.0
        self.stop_requested = False
        self._params = [p for p in model.parameters() if p.requires_grad]

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self.hooks.append(hook)

    def train(self) -> None:
        """Run the loop; ``after_train`` hooks run only when it ends without an error."""
        logger.info("training from iteration %d to %d", self.start_iter, self.max_iter)
        self.model.train()
        for hook in self.hooks:
            hook.before_train()
        while self.iter < self.max_iter and not self.stop_requested:
            for hook in self.hooks:
                hook.before_step()
            start = time.perf_counter()
            self.run_step()
            self.step_time = time.perf_counter() - start
            self.iter += 1
            for hook in self.hooks:
                hook.after_step()
        for hook in self.hooks:
            hook.after_train()

    def run_step(self) -> None:
        """One step: losses, their sum, backward, update — or a skip if the sum is not finite."""
        images, targets = next(self.data)
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{key: value.to(self.device, non_blocking=True) if isinstance(value, Tensor)
                    else value for key, value in target.items()} for target in targets]

        with self.precision.autocast():
            loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        self.loss_dict = {name: value.detach() for name, value in loss_dict.items()}

        # Every process must take the same decision, or DDP's gradient all-reduce hangs.
        self.step_skipped = not all_true(bool(torch.isfinite(loss)), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_skipped:
            self._skip()
            return
        self._consecutive_skips = 0

        self.scaler.scale(loss).backward()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _skip(self) -> None:
        self.skipped_steps += 1
        self._consecutive_skips += 1
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in self.loss_dict.items())
        logger.warning("iteration %d: loss is not finite (%s) on at least one process; "
                       "step skipped, weights unchanged (%d skipped so far)",
                       self.iter, values, self.skipped_steps)
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise FloatingPointError(
                f"{self._consecutive_skips} consecutive steps with a non-finite loss up to "
                f"iteration {self.iter}: training diverged (try a lower solver.base_lr, a "
                f"longer warm-up or solver.clip_grad_norm)")
