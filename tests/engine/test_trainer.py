"""The training loop on a toy model: the update, hooks, the non-finite-loss guard, the budget."""

import itertools
import json
import logging
import math
import time

import pytest
import torch
from torch import nn

from fcos_fast.engine.hooks import TimeBudget
from fcos_fast.engine.schedule import WarmupSchedule
from fcos_fast.engine.trainer import HookBase, Trainer


class Toy(nn.Module):
    """``{"a": |w|^2, "b": sum(w)}``, with ``b`` NaN at the calls listed in ``nan_at``."""

    def __init__(self, nan_at=()):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, images, targets):
        assert len(images) == len(targets) == 2
        b = self.weight.sum()
        if self.calls in self.nan_at:
            b = b * float("nan")
        self.calls += 1
        return {"a": (self.weight ** 2).sum(), "b": b}


def _trainer(model, max_iter, **kwargs):
    data = itertools.repeat(([torch.zeros(3, 4, 4)] * 2, [{"boxes": torch.zeros(0, 4)}] * 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, optimizer, data, max_iter=max_iter, **kwargs)


class Recorder(HookBase):
    def __init__(self):
        self.events = []

    def before_train(self):
        self.events.append("before_train")

    def before_step(self):
        self.events.append(("before", self.trainer.iter))

    def after_step(self):
        self.events.append(("after", self.trainer.iter))

    def after_train(self):
        self.events.append("after_train")


def test_step_sums_the_losses_and_updates():
    model = Toy()
    trainer = _trainer(model, 1)
    trainer.train()
    # d/dw (|w|^2 + sum w) = 2w + 1 = 3 at w = 1.
    torch.testing.assert_close(model.weight.detach(), torch.full((3,), 1 - 0.1 * 3))
    assert set(trainer.loss_dict) == {"a", "b"}


def test_hooks_see_every_step_in_order():
    recorder = Recorder()
    trainer = _trainer(Toy(), 4, start_iter=2)
    trainer.register_hooks([recorder, None])
    trainer.train()
    assert recorder.events == ["before_train", ("before", 2), ("after", 3), ("before", 3),
                               ("after", 4), "after_train"]


def test_gradient_clipping():
    model = Toy()
    _trainer(model, 1, clip_grad_norm=1.0).train()
    # The gradient (3, 3, 3) has norm 3 * sqrt(3); clipped to norm 1.
    torch.testing.assert_close(model.weight.detach(), torch.full((3,), 1 - 0.1 / math.sqrt(3)),
                               rtol=1e-5, atol=1e-6)


def test_non_finite_loss_skips_the_step_and_says_so(caplog):
    model, reference = Toy(nan_at={1}), Toy()
    trainer = _trainer(model, 3)
    with caplog.at_level(logging.WARNING, logger="fcos_fast"):
        trainer.train()
    _trainer(reference, 2).train()  # the same two good steps
    torch.testing.assert_close(model.weight, reference.weight)
    assert trainer.skipped_steps == 1 and trainer.iter == 3
    assert "iteration 1: loss is not finite" in caplog.text and "step skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverged_run_stops():
    trainer = _trainer(Toy(nan_at=range(100)), 50, max_consecutive_skips=3)
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        trainer.train()
    assert trainer.iter == 2  # the third skipped step raised


class Slow(HookBase):
    def before_step(self):
        time.sleep(0.02)


def test_time_budget_shortens_the_schedule_and_stops():
    schedule = WarmupSchedule(10_000, "step", steps=[5000])
    trainer = _trainer(Toy(), 10_000)
    budget = TimeBudget(0.5, time.time(), schedule, reserve_seconds=0.0, check_period=2,
                        warmup_steps=2)
    trainer.register_hooks([Slow(), budget])
    start = time.time()
    trainer.train()
    assert time.time() - start < 2.0
    assert trainer.iter == trainer.max_iter < 100
    assert schedule.max_iters == trainer.max_iter and schedule.steps[0] < 50


def test_time_budget_already_spent_stops_at_once(caplog):
    trainer = _trainer(Toy(), 100)
    budget = TimeBudget(1.0, time.time() - 10, WarmupSchedule(100), check_period=1,
                        warmup_steps=1)
    trainer.register_hooks([budget])
    with caplog.at_level(logging.WARNING, logger="fcos_fast"):
        trainer.train()
    assert trainer.iter == 1 and trainer.stop_requested
    assert "time budget" in caplog.text


class SlowEvaluation(HookBase):
    """Stands in for ``EvalHook``: every ``period`` steps an evaluation of ``seconds``."""

    def __init__(self, period, seconds):
        self.period, self.seconds, self.last_seconds, self.runs = period, seconds, None, 0

    def after_step(self):
        if self.trainer.iter % self.period == 0 and self.trainer.iter < self.trainer.max_iter:
            time.sleep(self.seconds)
            self.last_seconds, self.runs = self.seconds, self.runs + 1


def test_time_budget_pays_for_the_periodic_evaluations():
    """Steps of 20 ms and an evaluation of 0.3 s every 10: a 2 s budget holds about 40
    steps. Counting the steps alone it would plan 100, whose evaluations take 3 s more."""
    schedule = WarmupSchedule(10_000, "cosine")
    trainer = _trainer(Toy(), 10_000)
    evaluation = SlowEvaluation(10, 0.3)
    budget = TimeBudget(2.0, time.time(), schedule, reserve_seconds=0.0, check_period=2,
                        warmup_steps=2, evaluation=evaluation)
    trainer.register_hooks([Slow(), budget, evaluation])
    start = time.time()
    trainer.train()
    assert time.time() - start < 2.0 + 0.5, (trainer.iter, evaluation.runs)
    assert evaluation.runs >= 1 and trainer.iter == trainer.max_iter < 80


def test_time_budget_plans_the_end_with_the_evaluations_before_it():
    """At iteration 10 with 1.7 s left after the final evaluation (0.3 s): steps of 20 ms
    and an evaluation every 10 steps end at iteration 50 (40 steps, 3 evaluations: 0.8 +
    0.9 s); counting the steps alone would plan 95."""
    evaluation = SlowEvaluation(10, 0.3)
    evaluation.last_seconds = 0.3
    budget = TimeBudget(2.0, time.time(), WarmupSchedule(10_000), reserve_seconds=0.0,
                        evaluation=evaluation)
    budget.trainer = _trainer(Toy(), 10_000)
    budget.trainer.iter = 10
    assert budget._iterations_that_fit(0.02) in (49, 50)  # 49: the clock moved meanwhile


def test_a_skipped_steps_nan_loss_is_null_in_the_json_lines(tmp_path):
    """``metrics.jsonl`` stays strict JSON when a step's loss is NaN (the step skipped)."""
    from fcos_fast.engine.hooks import MetricsWriter

    trainer = _trainer(Toy(nan_at={0}), 1)
    writer = MetricsWriter(tmp_path, period=1, progress=False)
    trainer.register_hooks([writer])
    trainer.train()

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line, parse_constant=refuse)
    assert record["train/b"] is None and record["train/total_loss"] is None
    assert record["train/a"] == 3.0 and record["train/skipped_steps"] == 1.0


def test_the_progress_bar_is_one_bar_that_reaches_the_end(tmp_path, capsys):
    """``python -m fcos_fast.train`` without ``--no-progress``: one bar for the run, from
    the start iteration to the end (the tests of the command run it without)."""
    from fcos_fast.engine.hooks import MetricsWriter

    trainer = _trainer(Toy(), 5, start_iter=1)
    trainer.register_hooks([MetricsWriter(tmp_path, period=1, progress=True)])
    trainer.train()
    bars = capsys.readouterr().err
    assert bars.count("1/5 [") == 1 and "5/5 [" in bars, bars
