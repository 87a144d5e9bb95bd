"""A tiny, fast experiment for the end-to-end tests: 64-pixel images, a narrow FPN and
head, a few iterations; on synthetic images (``tiny_overrides``) or on any data
(``tiny_model_overrides``)."""

from pathlib import Path


def tiny_model_overrides(**changes) -> list[str]:
    """``--set`` values of the tiny network and schedule, for any dataset."""
    settings = {
        "input.min_size_train": "[64]",
        "input.max_size_train": 64,
        "input.min_size_test": 64,
        "input.max_size_test": 64,
        "model.backbone": "resnet18",
        "model.backbone_weights": "null",
        "model.fpn_channels": 64,
        "model.num_convs": 1,
        "solver.batch_size": 4,
        "solver.max_iters": 6,
        "solver.warmup_iters": 2,
        "solver.max_minutes": "null",
        "train.log_period": 1,
        "train.checkpoint_period": 3,
        "train.eval_batch_size": 4,
        # One thread: tiny ops on two threads stall at every OpenMP barrier when the
        # cores are shared (the test suite runs beside other work).
        "train.num_threads": 1,
        **changes,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def tiny_overrides(root: Path, **changes) -> list[str]:
    """``tiny_model_overrides`` on 16 + 4 synthetic images generated under ``root``."""
    return tiny_model_overrides(**{
        "data.root": str(root / "synthetic"),
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 4,
        "data.synthetic.image_size": 64,
        **changes,
    })
