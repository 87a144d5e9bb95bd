"""Checkpoint files: atomic writes that keep the previous checkpoint, and one-line errors
for files that cannot be used."""

import pytest
import torch

from fcos_fast.engine.checkpoint import (CheckpointError, load_checkpoint,
                                         load_checkpoint_or_previous, previous_path,
                                         save_checkpoint)


def _state(iteration: int) -> dict:
    return {"model": {"weight": torch.full((3,), float(iteration))}, "config": {},
            "class_names": ["a"], "iteration": iteration}


def _tear(path, keep: float = 0.5) -> None:
    """Cut the file short, as a full disk or an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_saving_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    assert not previous_path(path).exists()
    save_checkpoint(_state(2), path)
    save_checkpoint(_state(3), path)
    assert previous_path(path) == tmp_path / "checkpoint.previous.pt"
    assert load_checkpoint(path)["iteration"] == 3
    assert load_checkpoint(previous_path(path))["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.previous.pt",
                                                         "checkpoint.pt"]


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_a_torn_file_is_a_one_line_error_naming_it(tmp_path, keep):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    _tear(path, keep)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "truncated or corrupt" in message


def test_a_file_that_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="is not an fcos_fast training checkpoint"):
        load_checkpoint(path)


def test_fallback_to_the_previous_checkpoint(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    save_checkpoint(_state(2), path)
    assert load_checkpoint_or_previous(path)[0]["iteration"] == 2
    _tear(path)
    with caplog.at_level("WARNING"):
        state, source = load_checkpoint_or_previous(path)
    assert state["iteration"] == 1 and source == previous_path(path)
    assert "falling back to the previous checkpoint" in caplog.text
    path.unlink()  # a newest file that is gone altogether
    assert load_checkpoint_or_previous(path)[0]["iteration"] == 1


def test_no_usable_checkpoint_names_both_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    save_checkpoint(_state(2), path)
    _tear(path)
    _tear(previous_path(path))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint_or_previous(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and str(previous_path(path)) in message
    with pytest.raises(FileNotFoundError):
        load_checkpoint_or_previous(tmp_path / "none.pt")
