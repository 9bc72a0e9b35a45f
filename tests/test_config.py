"""TrainConfig: one typed, frozen, validated set of training options."""

import argparse
import dataclasses
import json

import pytest

from plasticnet.training import TrainConfig, cli
from plasticnet.training.config import ConfigError, load_run_config

# config.json as `plasticnet train` wrote it before TrainConfig existed (every CLI dest, the
# recipe's model options, versions and world size): such a run directory must still resume.
PREVIOUS_FORMAT = {
    "augment": True, "backend": None, "base_width": 4, "batch_size": 16, "budget": None, "compile": False,
    "cutout": 0, "data_dir": "data", "dataset": "synthetic", "device": "cpu", "download": True, "drop": "taylor",
    "drop_count": "fraction", "epochs": 2, "eval_batch_size": 500, "eval_every_steps": 0, "grow": "probe",
    "init": None, "label_smoothing": 0.1, "log_every": 2, "lr": 0.1, "max_span": 3, "model": "plastic-resnet18",
    "model_options": {}, "momentum": 0.9, "optimizer": "sgd", "out": "runs/x", "progress": False, "recipe": None,
    "resume": None, "rewire_end": 1.0, "rewire_fraction": 0.3, "rewire_interval": 3, "schedule": "cosine",
    "seed": 0, "stem": "cifar", "test_size": 32, "train_size": 96, "tta": False,
    "versions": {"plasticnet": "0.1.0", "torch": "2.14.1", "torchvision": "0.29.1", "cuda": "13.0"},
    "warmup_epochs": 0.5, "weight_decay": 0.0005, "world_size": 1,
}  # fmt: skip


def test_is_frozen_and_every_option_is_a_flag():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    defaults = {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}
    options = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.metadata.get("help")}
    assert {k: v for k, v in defaults.items() if k not in ("resume", "overwrite")} == options
    assert {"val_size", "threads", "blocks_per_stage", "budget_per_stage", "image_size"} <= set(options)


def test_recipe_is_a_set_of_overrides_and_explicit_flags_win():
    config = cli.parse_config(["--recipe", "plasticnet-2020", "--lr", "0.1"])
    assert config.optimizer == "adam" and config.lr == 0.1 and config.model == "plastic-resnet50"
    assert config.model_options["nodes_per_stage"] == [7, 10, 16, 7]
    assert TrainConfig.from_overrides({"recipe": "plasticnet-2020", "lr": 0.1}).lr == 1e-3  # not explicit


def test_json_round_trip_keeps_every_field(tmp_path):
    config = cli.parse_config(["--model", "resnet18", "--blocks-per-stage", "2,1,1,2", "--val-size", "10"])
    (tmp_path / "config.json").write_text(json.dumps(config.to_json()))
    assert load_run_config(str(tmp_path)) == config
    assert load_run_config(str(tmp_path)).blocks_per_stage == (2, 1, 1, 2)


def test_previous_config_json_format_still_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PREVIOUS_FORMAT))
    config = load_run_config(str(tmp_path))
    assert config.model == "plastic-resnet18" and config.val_size == 0 and config.protect_rewires == 1
    assert config.download is True  # as saved, not today's default


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "--epochs: expected a positive integer"),
        ({"val_size": -1}, "--val-size: expected an integer >= 0"),
        ({"model": "vgg"}, "--model: expected one of"),
        ({"dataset": "mnist"}, "--dataset: expected one of"),
        ({"drop": "smallest"}, "--drop: expected one of"),
        ({"model": "plastic-resnet18", "blocks_per_stage": (2, 2, 2, 2)}, "static models only"),
        ({"model": "resnet18", "budget_per_stage": (2, 2, 2, 2)}, "plastic models only"),
        ({"model": "resnet18", "budget": 5, "blocks_per_stage": (2, 1, 1, 2)}, "disagree"),
        ({"budget_per_stage": (2, 0, 1, 2)}, "--budget-per-stage: expected positive integers"),
        ({"image_size": 64}, "--image-size applies to --dataset imagefolder only"),
        ({"drop_count": 0}, "--drop-count"),
    ],
)
def test_bad_values_are_one_config_error_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_unknown_keys_in_config_json_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**PREVIOUS_FORMAT, "warp_drive": 9}))
    with pytest.raises(ConfigError, match="unknown options \\['warp_drive'\\]"):
        load_run_config(str(tmp_path))


def test_missing_or_damaged_config_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_run_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_run_config(str(tmp_path))


def test_resolved_fills_device_defaults_and_records_facts():
    config = TrainConfig(dataset="synthetic").resolved("cpu", 1, {"torch": "x"})
    assert (config.base_width, config.train_size, config.test_size) == (16, 2560, 512)
    assert config.out == "runs/plastic-resnet18-synthetic-s0" and config.versions == {"torch": "x"}
    assert TrainConfig(drop="threshold", drop_count=2).resolved("cpu", 1, {}).drop_count == "fraction"


def test_budget_per_stage_auto_spreads_the_budget_like_the_static_twin():
    plastic = TrainConfig(budget=6, budget_per_stage="auto").resolved("cpu", 1, {})
    assert plastic.budget_per_stage == (2, 1, 1, 2) and plastic.budget == 6
    assert TrainConfig(budget_per_stage="auto").resolved("cpu", 1, {}).budget_per_stage == (2, 2, 2, 2)
    static = TrainConfig(model="resnet18", budget=6, budget_per_stage="auto").resolved("cpu", 1, {})
    assert static.budget_per_stage is None and static.budget == 6
    # the budget a run is grouped by is recorded even when only the per-stage counts gave it
    assert TrainConfig(budget_per_stage=(2, 1, 1, 1)).resolved("cpu", 1, {}).budget == 5
    assert TrainConfig(model="resnet18", blocks_per_stage=(1, 1, 1, 1)).resolved("cpu", 1, {}).budget == 4


def test_trainer_resolves_a_config_built_in_python(tmp_path):
    from plasticnet.training import Trainer

    config = TrainConfig(
        model="resnet18",
        dataset="synthetic",
        train_size=32,
        test_size=16,
        batch_size=16,
        base_width=4,
        epochs=1,
        device="cpu",
        progress=False,
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(config)
    assert trainer.config.versions["torch"] and trainer.config.world_size == 1
    assert [m["epoch"] for m in trainer.fit()] == [1]


def test_a_per_stage_budget_the_resnet_chain_does_not_meet_starts_random():
    from plasticnet.training.builders import build_model

    config = TrainConfig(dataset="synthetic", base_width=4, budget_per_stage=(3, 1, 2, 2)).resolved("cpu", 1, {})
    model = build_model(config, 10)
    assert model.budget_per_stage == (3, 1, 2, 2)
    assert tuple(sum(model.stage_of(p) == s for p in model.active_paths()) for s in range(4)) == (3, 1, 2, 2)
    chain = build_model(TrainConfig(base_width=4, budget_per_stage=(2, 2, 2, 2)).resolved("cpu", 1, {}), 10)
    assert chain.active_paths() == [(j - 1, j) for j in range(1, 9)]  # the ResNet's chain meets 2,2,2,2
