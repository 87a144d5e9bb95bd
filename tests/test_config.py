"""Configs: the shipped files load, unknown keys and bad values are errors, overrides apply,
schedules in epochs convert to iterations, and the shipped recipes say what they claim."""

from importlib import resources

import pytest

from fcos_fast.config import (Config, ConfigError, SolverConfig, apply_overrides, from_dict,
                              load_config, parse_overrides)

SHIPPED = sorted(p.name for p in (resources.files("fcos_fast") / "configs").iterdir()
                 if p.name.endswith(".yaml"))


def test_the_recipes_are_shipped():
    assert {"coco_r18.yaml", "coco_r50_1x.yaml", "synthetic.yaml", "voc_r18.yaml",
            "voc_r18_long.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
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


def _recipe(name):
    config = load_config(name)
    return config, config.data, config.input, config.model, config.solver


def test_voc_r18_is_the_seed_baseline():
    """ResNet-18 from ImageNet weights on VOC07 trainval, 10 epochs at LR 0.01, centerness
    weight 2, per-class candidates, batch 16 at 512 px."""
    config, data, inputs, model, solver = _recipe("voc_r18.yaml")
    assert (data.dataset, data.train_split, data.val_split) == ("voc", "trainval", "test")
    assert (model.backbone, model.backbone_weights) == ("resnet18", "IMAGENET1K_V1")
    assert model.centerness_weight == 2.0 and model.candidates == "per_class"
    assert (solver.max_epochs, solver.max_iters, solver.base_lr) == (10, None, 0.01)
    assert solver.optimizer == "sgd" and solver.batch_size == 16
    assert inputs.min_size_train == [512] and inputs.min_size_test == 512
    # VOC07 trainval: 5011 images, 313.2 iterations per epoch.
    assert solver.in_iterations(5011).max_iters == 3132
    assert solver.in_iterations(5011).steps == [2192, 2819]


def test_voc_r18_long_changes_only_epochs_and_lr():
    base, long = load_config("voc_r18.yaml").to_dict(), load_config("voc_r18_long.yaml").to_dict()
    changed = {key for key in base["solver"] if base["solver"][key] != long["solver"][key]}
    # The steps are fractions of the run (the same), the warm-up the same 500 iterations,
    # a smaller fraction of the longer run.
    assert changed == {"max_epochs", "base_lr", "warmup_fraction"}
    assert (long["solver"]["max_epochs"], long["solver"]["base_lr"]) == (50, 8e-4)
    for name in ("voc_r18.yaml", "voc_r18_long.yaml"):
        assert load_config(name).solver.in_iterations(5011).warmup_iters == 500
    assert {k: v for k, v in base.items() if k != "solver" and k != "train"} == \
        {k: v for k, v in long.items() if k != "solver" and k != "train"}


def test_coco_r18_is_four_epochs_of_the_voc_recipe():
    config, data, inputs, model, solver = _recipe("coco_r18.yaml")
    voc = load_config("voc_r18.yaml")
    assert (data.dataset, data.train_split, data.val_split) == ("coco", "train2017", "val2017")
    assert data.filter_empty and solver.max_epochs == 4 and solver.base_lr == 0.01
    assert config.model == voc.model and config.input == voc.input
    assert solver.in_iterations(117266).max_iters == 29317  # train2017 images with objects


def test_coco_r50_1x_is_the_standard_schedule():
    config, data, inputs, model, solver = _recipe("coco_r50_1x.yaml")
    assert (model.backbone, model.backbone_weights) == ("resnet50", "IMAGENET1K_V1")
    assert (solver.max_iters, solver.batch_size, solver.base_lr) == (90000, 16, 0.01)
    # Steps and warm-up are fractions of the run (so that --set solver.max_iters keeps
    # their place): at 90k iterations they are the 1x schedule's.
    in_iterations = solver.in_iterations()  # no epochs: the dataset's size is not needed
    assert in_iterations.steps == [60000, 80000] and in_iterations.warmup_iters == 500
    assert inputs.min_size_train == [800] and inputs.max_size_train == 1333
    assert (inputs.min_size_test, inputs.max_size_test) == (800, 1333)
    assert model.fpn_channels == 256 and model.candidates == "per_level"
    assert solver.in_iterations(117266) == in_iterations  # no unit depends on the data


def test_epochs_become_iterations():
    solver = SolverConfig(batch_size=16, max_epochs=10, steps_epochs=[7, 9], warmup_epochs=0.5)
    converted = solver.in_iterations(5011)  # 313.1875 iterations per epoch
    assert (converted.max_iters, converted.steps, converted.warmup_iters) == (3132, [2192, 2819],
                                                                            157)
    assert (converted.max_epochs, converted.steps_epochs, converted.warmup_epochs) == \
        (None, [], 0.0)
    # A whole number of iterations stays whole (no float round-up to one more).
    assert SolverConfig(batch_size=16, max_epochs=4).in_iterations(16).max_iters == 4
    assert SolverConfig(batch_size=3, max_epochs=0.7).in_iterations(30).max_iters == 7
    # Lengths in iterations pass through; units can be mixed per field.
    mixed = SolverConfig(batch_size=4, max_epochs=2, steps=[3], warmup_iters=1)
    assert mixed.in_iterations(10) == SolverConfig(batch_size=4, max_iters=5, steps=[3],
                                                   warmup_iters=1)


def test_a_schedule_needs_exactly_one_length():
    with pytest.raises(ConfigError, match="set solver.max_iters or solver.max_epochs"):
        SolverConfig().in_iterations(100)
    for both in ({"max_iters": 10, "max_epochs": 1}, {"steps": [5], "steps_epochs": [1]},
                 {"warmup_iters": 5, "warmup_epochs": 0.5}):
        with pytest.raises(ConfigError, match="are both set"):
            from_dict({"solver": both})


@pytest.mark.parametrize("solver, message", [
    ({"max_epochs": 0}, "max_epochs must be positive"),
    ({"max_iters": -3}, "max_iters must be positive"),
    ({"steps_epochs": [9, 7]}, "steps_epochs must be positive and increasing"),
    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
    ({"batch_size": 0}, "batch_size must be positive"),
])
def test_bad_schedules(solver, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"solver": solver})


def test_an_override_replaces_the_other_unit(tmp_path):
    """``--set solver.max_iters=100`` on a config written in epochs means 100 iterations."""
    short = load_config("voc_r18.yaml", ["solver.max_iters=100", "solver.steps=[60, 80]"])
    assert (short.solver.max_iters, short.solver.max_epochs) == (100, None)
    assert (short.solver.steps, short.solver.steps_epochs, short.solver.steps_fraction) == \
        ([60, 80], [], [])
    assert short.solver.warmup_fraction == 0.1597  # untouched: 16 of the 100 iterations
    assert short.solver.in_iterations().warmup_iters == 16
    epochs = load_config(None, ["solver.max_epochs=2"])  # synthetic.yaml is in iterations
    assert (epochs.solver.max_iters, epochs.solver.max_epochs) == (None, 2)
    # Clearing a field does not clear its partner; a file with both is an error.
    assert load_config(None, ["solver.max_epochs=null"]).solver.max_iters == \
        load_config().solver.max_iters
    both = tmp_path / "both.yaml"
    both.write_text("solver: {max_iters: 10, max_epochs: 2}\n")
    with pytest.raises(ConfigError, match="are both set"):
        load_config(both)
    # The same rule for a checkpoint's stored config (evaluate/infer --set).
    stored = load_config("voc_r18.yaml").to_dict()
    assert from_dict(apply_overrides(stored, {"solver": {"max_iters": 7}})).solver.max_iters == 7


def test_the_default_run_evaluates_during_training():
    train, solver = load_config().train, load_config().solver
    assert 0 < train.eval_period and solver.max_iters // train.eval_period >= 2


def test_a_recipe_made_longer_on_a_small_set_keeps_its_shape():
    """The issue's case: coco_r18.yaml at 50 epochs of 44 images is 138 iterations; its
    steps stay at 70% and 90% of them, after a warm-up as short as the run is."""
    solver = load_config("coco_r18.yaml", ["solver.max_epochs=50"]).solver.in_iterations(44)
    assert (solver.max_iters, solver.steps, solver.warmup_iters) == (138, [97, 124], 2)
    short = load_config("voc_r18.yaml", ["solver.max_iters=200"]).solver.in_iterations(5011)
    assert (short.steps, short.warmup_iters) == ([140, 180], 32)


@pytest.mark.parametrize("solver, message", [
    ({"max_iters": 138, "warmup_iters": 500},
     "the warm-up (solver.warmup_iters 500: 500 iterations) is at least as long as the run of "
     "138 iterations"),
    ({"max_epochs": 2, "warmup_epochs": 2, "batch_size": 4},
     "the warm-up (solver.warmup_epochs 2.0: 6 iterations) is at least as long as the run of 6"),
    ({"max_iters": 138, "steps": [8, 10], "warmup_iters": 20},
     "LR steps at iterations [8, 10] (solver.steps [8, 10]) fall at or before the end of the "
     "warm-up (iteration 20)"),
    ({"max_iters": 1000, "steps": [60000, 80000]},
     "LR steps at iterations [60000, 80000] (solver.steps [60000, 80000]) lie at or past the end "
     "of the run of 1000 iterations"),
    ({"max_epochs": 2, "steps_epochs": [1, 2], "batch_size": 4},
     "(solver.steps_epochs [1.0, 2.0]) lie at or past the end"),
])
def test_schedules_that_cannot_work_are_refused(solver, message):
    with pytest.raises(ConfigError) as error:
        from_dict({"solver": solver}).solver.in_iterations(12)
    assert message in str(error.value)


def test_cosine_ignores_steps_and_fractions_scale():
    assert from_dict({"solver": {"max_iters": 10, "lr_schedule": "cosine", "steps": [50]}}
                     ).solver.in_iterations().steps == [50]  # unused by cosine: not refused
    solver = from_dict({"solver": {"max_iters": 200, "steps_fraction": [0.5, 0.75],
                                   "warmup_fraction": 0.1}}).solver
    assert (solver.in_iterations().steps, solver.in_iterations().warmup_iters) == ([100, 150], 20)
    with pytest.raises(ConfigError, match="steps_fraction must be fractions of the run"):
        from_dict({"solver": {"steps_fraction": [0.5, 1.5]}})
    # --set solver.warmup_iters=0 turns off a warm-up the file gives as a fraction.
    assert load_config(None, ["solver.warmup_iters=0"]).solver.in_iterations().warmup_iters == 0


@pytest.mark.parametrize("override, message", [
    ("model.fpn_channels=100", "model.fpn_channels must be a positive multiple of 32"),
    ("model.trainable_backbone_layers=7", "model.trainable_backbone_layers must be in [0, 5]"),
    ("input.min_size_train=[0]", "input.min_size_train must be positive sizes"),
    ("model.score_thresh=1.5", "model.score_thresh must be in [0, 1)"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be at least 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("solver.amp=bf15", "solver.amp must be one of auto, bf16, fp16, fp32, got 'bf15'"),
])
def test_values_that_would_fail_later_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)
