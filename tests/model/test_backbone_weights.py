"""Backbone weights by torchvision name (``model.backbone_weights: IMAGENET1K_V1``).

No test touches the network: the torch hub cache is a temporary ``TORCH_HOME`` and
torch.hub's downloader is replaced, either by one that refuses (offline) or by one that
writes a file (a download that works).
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_fast import evaluate, train
from fcos_fast.engine.build import load_trained_model
from fcos_fast.model import FCOS, resnet_fpn_backbone
from fcos_fast.model.backbone import WeightsError, backbone_weights_file
from tests.engine.tiny import tiny_overrides

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's name for ResNet18_Weights.IMAGENET1K_V1
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"


@pytest.fixture
def hub_checkpoints(tmp_path, monkeypatch):
    """An empty torch hub cache; ``torch.hub.get_dir()`` follows ``$TORCH_HOME``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def downloads(monkeypatch):
    """Every download attempt, each refused as a machine without network refuses it."""
    attempts = []

    def offline(url, destination, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return attempts


def _save_random_resnet18(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), path)
    return resnet


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_a_cached_file_is_loaded_without_any_download(hub_checkpoints, downloads, name):
    resnet = _save_random_resnet18(hub_checkpoints / RESNET18_FILE)
    backbone = resnet_fpn_backbone("resnet18", weights=name)
    assert downloads == []
    body = backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(body.layer2[0].bn1.running_mean, resnet.layer2[0].bn1.running_mean)
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # torchvision's default when pretrained


def test_a_missing_file_offline_is_one_line_naming_file_and_folder(hub_checkpoints, downloads):
    with pytest.raises(WeightsError) as raised:
        FCOS(3, "resnet18", backbone_weights="IMAGENET1K_V1")
    message = str(raised.value)
    assert "\n" not in message
    assert f"put {RESNET18_FILE} in {hub_checkpoints}/" in message
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "Network is unreachable" in message
    assert downloads == [RESNET18_URL]
    assert not hub_checkpoints.exists() or not list(hub_checkpoints.iterdir())


def test_a_download_goes_through_torchvisions_weights_api(hub_checkpoints, monkeypatch):
    """torchvision's ``get_state_dict`` fetches the file into the cache once; later
    builds read the cached file."""
    saved = []

    def download(url, destination, hash_prefix=None, progress=True):
        assert url == RESNET18_URL and hash_prefix == "f37072fd"  # hash-checked
        saved.append(_save_random_resnet18(hub_checkpoints / RESNET18_FILE))

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert backbone_weights_file("resnet18", "IMAGENET1K_V1") == hub_checkpoints / RESNET18_FILE
    backbone = resnet_fpn_backbone("resnet18", weights="IMAGENET1K_V1")
    assert len(saved) == 1
    assert torch.equal(backbone.body.conv1.weight, saved[0].conv1.weight)


def test_a_bad_name_lists_the_valid_ones(hub_checkpoints, downloads):
    with pytest.raises(WeightsError, match=r"'IMAGENET1K_V9' is neither a file nor a "
                                           r"torchvision weights name of resnet50: use one of "
                                           r"IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        resnet_fpn_backbone("resnet50", weights="IMAGENET1K_V9")
    with pytest.raises(WeightsError, match="use one of IMAGENET1K_V1, DEFAULT"):
        resnet_fpn_backbone("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2")
    assert downloads == []


def test_a_path_still_works_and_a_missing_one_is_named(tmp_path, hub_checkpoints, downloads):
    resnet = _save_random_resnet18(tmp_path / "mine" / "resnet18.pth")
    backbone = resnet_fpn_backbone("resnet18", weights=tmp_path / "mine" / "resnet18.pth")
    assert torch.equal(backbone.body.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)
    with pytest.raises(WeightsError, match=r"weights file .*nope\.pth does not exist"):
        resnet_fpn_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file .*corrupt.pth"):
        resnet_fpn_backbone("resnet18", weights=corrupt)
    assert downloads == []


def _weights_overrides(tmp_path):
    return tiny_overrides(tmp_path, **{"model.backbone": "resnet18",
                                       "model.backbone_weights": "IMAGENET1K_V1",
                                       # A warm-up shorter than the run (2 iterations).
                                       "solver.max_iters": 2, "solver.warmup_iters": 1})


def test_train_offline_without_the_file_stops_with_one_line(tmp_path, hub_checkpoints,
                                                            downloads, capsys):
    code = train.main(["--out", str(tmp_path / "run"), "--no-progress",
                       "--set", *_weights_overrides(tmp_path)])
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert captured.out == ""  # not even torch.hub's "Downloading: ..." line
    assert error[0].startswith("error: ")
    assert f"put {RESNET18_FILE} in {hub_checkpoints}/" in error[0]
    assert not (tmp_path / "synthetic").exists()  # stopped before reading any data


def test_a_trained_checkpoint_needs_no_imagenet_file(tmp_path, hub_checkpoints, monkeypatch,
                                                     capsys):
    """Training reads the cached file; evaluating the checkpoint does not need it."""
    _save_random_resnet18(hub_checkpoints / RESNET18_FILE)
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--no-progress",
                       "--set", *_weights_overrides(tmp_path)]) == 0
    (hub_checkpoints / RESNET18_FILE).unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", pytest.fail)
    model, config, _ = load_trained_model(out / "checkpoint.pt")
    assert config.model.backbone_weights == "IMAGENET1K_V1"
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--no-progress"]) == 0
