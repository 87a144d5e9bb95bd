"""Configs: the shipped files load, unknown keys and bad values are errors, overrides apply."""

import pytest

from fcos_fast.config import Config, ConfigError, from_dict, load_config, parse_overrides


@pytest.mark.parametrize("name", ["synthetic.yaml", "voc_fcos.yaml", "coco_fcos.yaml"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert isinstance(config, Config)
    assert from_dict(config.to_dict()) == config  # the round trip a checkpoint relies on


def test_default_is_the_synthetic_experiment():
    config = load_config()
    assert config.data.dataset == "synthetic" and config.model.backbone == "resnet18"
    assert config.solver.max_minutes is not None


def test_overrides():
    config = load_config(None, ["solver.base_lr=0.02", "input.min_size_train=[100, 120]",
                                "model.backend=reference", "solver.clip_grad_norm=null",
                                "data.synthetic.shapes=[circle, cross]"])
    assert config.solver.base_lr == 0.02 and config.input.min_size_train == [100, 120]
    assert config.model.backend == "reference" and config.solver.clip_grad_norm is None
    assert config.data.synthetic.shapes == ["circle", "cross"]
    assert load_config(None, ["solver.max_iters=7"]).solver.base_lr == load_config().solver.base_lr


@pytest.mark.parametrize("override, message", [
    (["solver.lr=0.1"], r"unknown key\(s\) \['lr'\]"),
    (["solver.max_iters=ten"], "solver.max_iters must be int"),
    (["model.sync_bn=3"], "model.sync_bn must be bool"),
    (["data=5"], "must be a mapping"),
])
def test_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["solver.max_iters"])
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
