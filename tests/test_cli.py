"""The helpers the entry points share (``fcos_fast.engine.cli``): one home, one-line errors."""

import ast
from pathlib import Path

import pytest
import torch

from fcos_fast import evaluate, infer, train
from fcos_fast.config import ConfigError
from fcos_fast.data import DatasetError
from fcos_fast.engine.cli import one_line, report_user_errors, resolve_device

PACKAGE = Path(__file__).resolve().parents[1] / "fcos_fast"
ENTRY_POINTS = ("train", "evaluate", "infer")


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


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="train.device must be"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


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
