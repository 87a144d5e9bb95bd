"""A tiny, fast experiment for the end-to-end tests: 64-pixel synthetic images, a narrow
FPN and head, a few iterations."""

from pathlib import Path


def tiny_overrides(root: Path, **changes) -> list[str]:
    settings = {
        "data.root": str(root / "synthetic"),
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 4,
        "data.synthetic.image_size": 64,
        "input.min_size_train": "[64]",
        "input.max_size_train": 64,
        "input.min_size_test": 64,
        "input.max_size_test": 64,
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
