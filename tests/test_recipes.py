"""The recipes: the original PlasticNet (2020) and the ResNet-50 it was compared with."""

import math

import pytest
import torch

from plasticnet.training import Trainer, cli
from plasticnet.training.builders import build_model
from plasticnet.training.run_dir import read_jsonl

NUM_CLASSES = 10  # the synthetic set's

REDUCED = [
    "--dataset",
    "synthetic",
    "--base-width",
    "4",
    "--train-size",
    "200",
    "--test-size",
    "50",
    "--device",
    "cpu",
    "--no-progress",
]
STAGE_ENTRIES = [(0, 1), (7, 8), (17, 18), (33, 34)]  # 7, 10, 16 and 7 nodes per stage


def test_plasticnet_2020_sets_the_original_training_settings():
    config = cli.parse_config(["--recipe", "plasticnet-2020"])
    assert {
        k: getattr(config, k)
        for k in (
            "model",
            "optimizer",
            "lr",
            "batch_size",
            "epochs",
            "augment",
            "label_smoothing",
            "schedule",
            "eval_every_steps",
            "rewire_interval",
            "drop",
            "grow",
            "budget",
            "max_span",
            "stem",
            "base_width",
        )
    } == {
        "model": "plastic-resnet50",
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": 50,
        "epochs": 10,
        "augment": False,
        "label_smoothing": 0.0,
        "schedule": "constant",
        "eval_every_steps": 30,
        "rewire_interval": 500,
        "drop": "gate",
        "grow": "random",
        "budget": 15,
        "max_span": 1,
        "stem": "imagenet",
        "base_width": 64,
    }
    assert config.drop_count == 1
    assert config.rewire_end == pytest.approx(0.9)  # no rewiring in the last of 10 epochs


def test_other_drop_criteria_of_the_original_are_flags_away():
    assert cli.parse_config(["--recipe", "plasticnet-2020", "--drop", "gradient"]).drop_count == 1
    assert cli.parse_config(["--recipe", "plasticnet-2020", "--drop", "threshold"]).drop_count == "fraction"
    with pytest.raises(SystemExit):
        cli.parse_config(["--drop-count", "0"])


def test_explicit_flags_win_over_the_recipe_even_when_equal_to_the_defaults():
    config = cli.parse_config(["--recipe", "plasticnet-2020", "--lr", "0.1", "--epochs", "3", "--augment"])
    assert config.lr == 0.1 and config.epochs == 3 and config.augment is True  # 0.1 is --lr's default
    assert config.optimizer == "adam" and config.batch_size == 50


def test_plasticnet_2020_builds_the_original_network():
    torch.manual_seed(0)
    model = build_model(cli.parse_config(["--recipe", "plasticnet-2020", *REDUCED]), NUM_CLASSES)
    assert model.num_nodes == 40 and model.budget == 15
    assert model.candidate_paths() == [(j - 1, j) for j in range(1, 41)]  # span 1
    active = model.active_paths()
    assert len(active) == 15 and set(STAGE_ENTRIES) <= set(active)
    gates = torch.stack(list(model.gates().values()))
    assert bool(((gates >= 0) & (gates < 1)).all()) and gates.std() > 0  # uniform in [0, 1)
    assert [model.node_channels[j] for _, j in STAGE_ENTRIES] == [16, 32, 64, 128]  # 256..2048 at width 64
    assert model.join_activation == "none"
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, NUM_CLASSES)


def test_resnet50_2020_is_the_static_resnet50_with_the_same_training():
    config = cli.parse_config(["--recipe", "resnet50-2020", *REDUCED])
    assert config.model == "resnet50" and config.optimizer == "adam" and config.batch_size == 50
    model = build_model(config, NUM_CLASSES)
    assert len(model.active_paths()) == 16  # ResNet-50's blocks
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.slow
def test_plasticnet_2020_trains_and_drops_one_path_per_rewire_on_schedule(tmp_path):
    # 200 samples / batch 50 = 4 steps per epoch, 8 in all; rewiring stops at 0.9 * 8 = 7.2
    config = cli.parse_config(
        [
            "--recipe",
            "plasticnet-2020",
            *REDUCED,
            "--epochs",
            "2",
            "--rewire-interval",
            "2",
            "--eval-every-steps",
            "3",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    metrics = Trainer(config).fit()
    events = read_jsonl(str(tmp_path / "run" / "events.jsonl"))
    assert [e["step"] for e in events] == [2, 4, 6]
    for event in events:
        assert len(event["dropped"]) == 1 and len(event["grown"]) == 1
        assert len(event["active_paths"]) == 15
    assert [e["step"] for e in read_jsonl(str(tmp_path / "run" / "step_evals.jsonl"))] == [3, 6]
    assert all(math.isfinite(m["train_loss"]) for m in metrics) and len(metrics[-1]["active_paths"]) == 15
