"""The default run, trained for the slow learning-outcome tests: once per test session for
each data draw, shared by every test that needs a model that has learned (``conftest.py``
makes them fixtures: ``default_run``, ``default_run_seed7``).

Each is ``python -m fcos_fast.train`` with no arguments but the time budget switched off
(``solver.max_minutes=null``: the full 800-iteration schedule, so that the result does not
depend on how busy the machine is), run as a user runs it, in a fresh process, with the
synthetic set generated anew into a temporary cache as on a fresh machine. About 5
minutes each on an idle 2-core CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: A guard against a hung run, not a speed check: 5 minutes idle, but a 2-core machine
#: shared with other work has taken over 100 minutes (the step time grows tenfold).
TIMEOUT_S = 4 * 3600


def train_default_run(root: Path, *overrides: str) -> Path:
    """Train the default run in ``root`` (with ``--set`` ``overrides``); returns its
    output folder (``checkpoint.pt``, ``metrics.json``, ``log.txt``)."""
    env = {**os.environ, "FCOS_FAST_CACHE": str(root / "cache"), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "fcos_fast.train", "--no-progress",
                    "--set", "solver.max_minutes=null", *overrides],
                   cwd=root, env=env, check=True, timeout=TIMEOUT_S)
    return root / "runs" / "synthetic"


def use_its_data(run: Path, monkeypatch) -> None:
    """Point this process at the synthetic set ``run`` was trained on (its temporary
    cache), so that evaluating it reads that set rather than generating one elsewhere."""
    monkeypatch.setenv("FCOS_FAST_CACHE", str(run.parents[1] / "cache"))
