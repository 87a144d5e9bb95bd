"""Warm-up, step and cosine schedules, and shortening them."""

import math

import pytest
import torch

from fcos_fast.engine.schedule import WarmupSchedule, build_scheduler


def test_warmup_then_cosine():
    schedule = WarmupSchedule(100, "cosine", warmup_iters=10, warmup_factor=0.1)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(5) == pytest.approx((0.1 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert schedule(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert schedule(50) == pytest.approx(0.5)
    assert schedule(100) == pytest.approx(0.0)


def test_step():
    schedule = WarmupSchedule(100, "step", steps=[60, 80], gamma=0.1)
    assert [schedule(i) for i in (0, 59, 60, 79, 80, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_shorten_compresses_the_curve():
    step = WarmupSchedule(100, "step", steps=[60, 80], warmup_iters=5)
    step.shorten(50)
    assert step.steps == [30, 40] and step.max_iters == 50 and step.warmup_iters == 5
    cosine = WarmupSchedule(100, "cosine")
    cosine.shorten(40)
    assert cosine(20) == pytest.approx(0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr_schedule"):
        WarmupSchedule(10, "linear")
    with pytest.raises(ValueError, match="increase"):
        WarmupSchedule(10, "step", steps=[8, 4])


def test_scheduler_state_carries_a_shortened_schedule():
    def make():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return build_scheduler(optimizer, WarmupSchedule(100, "cosine")), optimizer

    scheduler, optimizer = make()
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    scheduler.lr_lambdas[0].shorten(20)
    restored, optimizer = make()
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[0].max_iters == 20
    optimizer.step()
    restored.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 11 / 20)))
