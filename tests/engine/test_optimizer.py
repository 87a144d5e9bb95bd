"""solver.optimizer: SGD or AdamW, no weight decay on normalisation layers."""

import pytest
import torch

from fcos_fast.config import ConfigError, load_config
from fcos_fast.engine.build import build_model, build_optimizer


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice(name, kind):
    config = load_config(None, [f"solver.optimizer={name}", "solver.base_lr=0.003",
                                "solver.momentum=0.8", "solver.weight_decay=0.05"])
    model = build_model(config, 3)
    optimizer = build_optimizer(config, model)
    assert type(optimizer) is kind
    decay, no_decay = optimizer.param_groups
    assert decay["lr"] == no_decay["lr"] == 0.003
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert (decay["betas"][0] if name == "adamw" else decay["momentum"]) == 0.8
    norms = {id(p) for m in model.modules() if isinstance(m, (torch.nn.GroupNorm,
                                                              torch.nn.BatchNorm2d))
             for p in m.parameters(recurse=False)}
    assert {id(p) for p in no_decay["params"]} == norms
    trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == trainable


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ConfigError, match="solver.optimizer must be one of sgd, adamw"):
        load_config(None, ["solver.optimizer=lamb"])
