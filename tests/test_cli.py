"""The helpers the entry points share (``fcos_fast.engine.cli``): one home, one-line errors.

``run_entry_point`` and ``assert_one_error_line`` test a command as the user runs it: a
subprocess of ``python -m fcos_fast.<command>``.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcos_fast import evaluate, infer, train
from fcos_fast.config import ConfigError
from fcos_fast.data import DatasetError
from fcos_fast.engine.cli import one_line, report_user_errors, resolve_device

PACKAGE = Path(__file__).resolve().parents[1] / "fcos_fast"
ENTRY_POINTS = ("train", "evaluate", "infer")


def run_entry_point(command: str, *args, cwd: Path, env: dict | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m fcos_fast.<command> *args`` in ``cwd``, as a user runs it (one thread
    per process: the test suite shares its cores)."""
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    return subprocess.run([sys.executable, "-m", f"fcos_fast.{command}", *map(str, args)],
                          cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command ended with exit status 2 and exactly one ``error:`` line on stderr, its
    last, holding each of ``fragments``; no traceback. Returns that line."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_do_not_import_each_other(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    others = {f"fcos_fast.{other}" for other in ENTRY_POINTS if other != name}
    assert not imported & others


def test_user_errors_are_one_line(capsys):
    def fails():
        raise DatasetError("first line\n  second line")

    assert report_user_errors(fails) == 2
    assert capsys.readouterr().err == "error: first line second line\n"
    assert one_line(ValueError("a\tb\n\nc")) == "a b c"


def test_other_errors_keep_their_traceback():
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        report_user_errors(bug)


@pytest.mark.parametrize("gpu", [True, False], ids=["with-gpu", "without-gpu"])
def test_resolve_device(monkeypatch, gpu):
    """``auto`` is CUDA exactly when torch sees a GPU; ``cuda[:N]`` needs one (both cases
    on every machine: torch.cuda.is_available is what the function asks)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if gpu else "cpu")
    with pytest.raises(ConfigError, match="train.device must be"):
        resolve_device("gpu0")
    if gpu:
        assert resolve_device("cuda") == torch.device("cuda")
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=f"train.device is '{name}' but CUDA is not "
                                                  f"available"):
                resolve_device(name)


@pytest.mark.parametrize("main, argv", [
    (train.main, ["--set", "solver.lr=0.1"]),
    (train.main, ["--config", "no_such.yaml"]),
    (evaluate.main, ["--checkpoint", "missing.pt"]),
    (infer.main, ["--checkpoint", "missing.pt", "--out", "pics"]),
])
def test_entry_points_report_user_errors_in_one_line(tmp_path, monkeypatch, capsys, main, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
