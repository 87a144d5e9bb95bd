"""Learning-rate schedule: linear warm-up, then step decay or cosine annealing.

``WarmupSchedule`` is a callable object (not a closure) so that ``LambdaLR.state_dict``
saves it and a resumed run continues on the same curve, even one that ``TimeBudget``
shortened.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("step", "cosine")


class WarmupSchedule:
    """LR multiplier at iteration ``it`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    * warm-up: the multiplier rises linearly from ``warmup_factor`` at 0 to 1 at
      ``warmup_iters`` (and multiplies the decay below);
    * ``"step"``: times ``gamma`` at each of ``steps``;
    * ``"cosine"``: ``(1 + cos(pi * it / max_iters)) / 2``.
    """

    def __init__(self, max_iters: int, kind: str = "cosine", *, steps: list[int] | None = None,
                 gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_factor: float = 1.0 / 3) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
        if max_iters <= 0:
            raise ValueError(f"max_iters must be positive, got {max_iters}")
        steps = list(steps or [])
        if kind == "step" and steps != sorted(steps):
            raise ValueError(f"steps must increase, got {steps}")
        self.max_iters, self.kind, self.steps, self.gamma = max_iters, kind, steps, gamma
        self.warmup_iters, self.warmup_factor = warmup_iters, warmup_factor

    def __call__(self, it: int) -> float:
        if self.kind == "step":
            factor = self.gamma ** sum(it >= step for step in self.steps)
        else:
            factor = 0.5 * (1 + math.cos(math.pi * min(it, self.max_iters) / self.max_iters))
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor

    def refit(self, max_iters: int, kind: str, steps: list[int], gamma: float) -> None:
        """Continue as a ``kind`` schedule of ``max_iters`` with ``steps`` (a resumed run
        given another length or steps): the curve from the current iteration on is the new
        schedule's; the warm-up, done or under way, is kept."""
        new = WarmupSchedule(max_iters, kind, steps=steps, gamma=gamma,
                             warmup_iters=self.warmup_iters, warmup_factor=self.warmup_factor)
        self.__dict__.update(vars(new))

    def shorten(self, max_iters: int) -> None:
        """Compress the schedule to end at ``max_iters`` (step milestones scale along;
        the warm-up, already under way or done, is kept)."""
        ratio = max_iters / self.max_iters
        self.steps = [round(step * ratio) for step in self.steps]
        self.max_iters = max_iters


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupSchedule
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
