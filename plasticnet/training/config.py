"""The training options as one frozen dataclass, `TrainConfig`: built from the command line or
from Python, a recipe applied as overrides (explicit options win), validated in one place, and
written to / read back from a run directory's config.json.

Every field with `help` metadata is a `plasticnet train` option of the same name (underscores
become dashes); the others are facts of the run (versions, world size) recorded beside them.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision

from plasticnet import __version__
from plasticnet.models import ARCHITECTURES, blocks_for_budget
from plasticnet.models.architectures import STEMS
from plasticnet.ops import BACKENDS
from plasticnet.plasticity.controller import GROWN_GATES, REGROW_MODES
from plasticnet.plasticity.criteria import DROP_CRITERIA, GROW_CRITERIA
from plasticnet.training.datasets import DATASETS
from plasticnet.training.recipes import RECIPES

DEVICE_DEFAULTS = {
    # Sizes a CPU finishes in minutes (`make train`); on CUDA the synthetic set matches CIFAR-10's.
    "cpu": {"base_width": 16, "synthetic_train_size": 2560, "synthetic_test_size": 512},
    "cuda": {"base_width": 64, "synthetic_train_size": 50000, "synthetic_test_size": 10000},
}
# What --resume may change; everything else would make the continued run another experiment.
RESUMABLE = frozenset({"epochs", "device", "backend", "compile", "progress", "log_every", "threads"})


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option and what it expects."""


def _option(default, help: str, choices: tuple | None = None, **extra):
    return field(default=default, metadata={"help": help, "choices": choices, **extra})


def _fact(default=None):
    return field(default=default, metadata={"help": None})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. See `plasticnet train --help` for each field."""

    recipe: str | None = _option(None, "a named set of options (docs/reproducing-plasticnet.md); explicit options win")
    model: str = _option(
        "plastic-resnet18", "plastic-* rewires its residual paths; resnet* are static torchvision-layout baselines"
    )
    dataset: str = _option("cifar10", "what to train on (synthetic: procedural, offline, learnable)")
    data_dir: str = _option("data", "directory holding (or, with --download, receiving) the dataset")
    download: bool = _option(False, "download cifar10 / cifar100 / fashion-mnist into --data-dir when missing")
    image_size: int = _option(32, "imagefolder only: images are resized to this square size once, at load")
    train_size: int | None = _option(
        None, "training samples (None: all of the dataset's after --val-size; synthetic: 2560 on CPU, 50000 on CUDA)"
    )
    val_size: int = _option(
        0, "training images held out as a fixed validation split, the same for every seed (0: none)"
    )
    test_size: int | None = _option(None, "test samples (None: all; synthetic: 512 on CPU, 10000 on CUDA)")
    epochs: int = _option(30, "epochs to train (with --resume: train up to this epoch)")
    batch_size: int = _option(128, "per-process batch size")
    eval_batch_size: int = _option(500, "batch size for evaluation")
    optimizer: str = _option("sgd", "sgd is Nesterov SGD", ("sgd", "adam"))
    lr: float = _option(0.1, "peak learning rate")
    momentum: float = _option(0.9, "SGD momentum")
    weight_decay: float = _option(5e-4, "weight decay")
    gate_weight_decay: float | None = _option(None, "weight decay of the path gates (None: --weight-decay)")
    label_smoothing: float = _option(0.1, "label smoothing of the cross-entropy")
    schedule: str = _option(
        "cosine", "lr after the warm-up: cosine or linear decay to 0, or constant", ("cosine", "linear", "constant")
    )
    warmup_epochs: float = _option(1.0, "linear lr warm-up length")
    augment: bool = _option(True, "random crop (reflect pad 4) and horizontal flip")
    cutout: int = _option(0, "cutout square side in pixels (0: off)")
    tta: bool = _option(False, "evaluate on the image and its mirror image")
    base_width: int | None = _option(None, "width of the first stage (None: 64 on CUDA, 16 on CPU)")
    stem: str = _option("cifar", "cifar: 3x3 conv; imagenet: 7x7/2 conv + max-pool", STEMS)
    budget: int | None = _option(
        None,
        "active residual blocks: a plastic model's active paths, a static model's blocks spread over the stages "
        "(None: the architecture's block count)",
    )
    blocks_per_stage: tuple[int, ...] | None = _option(
        None, "static models: blocks in each stage, e.g. 2,1,1,2 (None: from --budget or the architecture)", list=True
    )
    budget_per_stage: tuple[int, ...] | str | None = _option(
        None,
        "plastic models: active paths each stage keeps through rewiring, e.g. 2,1,1,2, or 'auto': the budget "
        "spread over the stages as the static twin's blocks (None: one budget for the whole network)",
    )
    init: str | None = _option(
        None,
        "initial topology of a plastic model (None: resnet, the chain (j-1 -> j), when the budget matches it; "
        "otherwise random)",
        ("resnet", "random"),
    )
    max_span: int = _option(3, "longest path, in nodes")
    drop: str = _option(
        "taylor",
        "drop the paths with the smallest EMA |gate*contribution| (taylor), |gate| (gate), summed |weight "
        "gradient| (gradient), or every |gate| below 0.5 (threshold)",
        DROP_CRITERIA,
    )
    grow: str = _option(
        "probe",
        "grow the inactive candidates with the largest probed |contribution| (probe) or at random",
        GROW_CRITERIA,
    )
    drop_count: str | int = _option(
        "fraction",
        "paths dropped per rewire: 'fraction' (RigL's cosine-decayed --rewire-fraction of the budget) or a number",
    )
    rewire_fraction: float = _option(
        0.1,
        "initial fraction of the budget rewired (RigL cosine decay; 0.1 won the Fashion-MNIST study, docs/results.md)",
    )
    rewire_interval: int = _option(100, "optimizer steps between rewires")
    rewire_end: float = _option(0.75, "stop rewiring after this fraction of training")
    protect_rewires: int = _option(1, "rewires a grown path is safe from being dropped")
    regrow: str = _option(
        "fresh",
        "a grown path starts from fresh weights, or from the weights it had when dropped (reactivate)",
        REGROW_MODES,
    )
    grown_gate: str = _option(
        "zero",
        "a grown path joins with gate 0 (zero), or with a fresh gate faded in over --rewire-interval steps (ramp)",
        GROWN_GATES,
    )
    probe_batch_norm: str = _option(
        "update", "whether the probe's forward updates BatchNorm running statistics", ("update", "frozen")
    )
    seed: int = _option(0, "seed of weights, data order, augmentation and rewiring")
    out: str | None = _option(None, "run directory (None: runs/MODEL-DATASET-sSEED)")
    device: str = _option("auto", "auto (cuda when visible), cpu, cuda or cuda:N")
    threads: int | None = _option(None, "torch intra-op threads (None: torch's default)")
    backend: str | None = _option(
        None,
        "residual_aggregate backend of every residual join (None: fastest available on the device)",
        BACKENDS,
    )
    compile: bool = _option(False, "torch.compile the stem, head and each path body")
    eval_every_steps: int = _option(0, "also log test accuracy every N steps (0: off)")
    log_every: int = _option(20, "progress-bar refresh interval in steps (one host sync)")
    progress: bool = _option(True, "show a progress bar")
    model_options: Mapping[str, Any] = field(default_factory=dict, metadata={"help": None})  # recipe-only
    versions: Mapping[str, Any] | None = _fact()
    world_size: int = _fact(1)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_overrides(cls, options: Mapping[str, Any], explicit: frozenset[str] = frozenset()) -> "TrainConfig":
        """Defaults, then the recipe named in `options`, then `options` (those in `explicit`
        win over the recipe; the rest are defaults the recipe may replace)."""
        recipe = options.get("recipe")
        if recipe is not None and recipe not in RECIPES:
            raise ConfigError(f"--recipe: expected one of {sorted(RECIPES)}, got {recipe!r}")
        merged = dict(options)
        for key, value in RECIPES.get(recipe, {}).items():
            if key not in explicit:
                merged[key] = value
        return cls(**_known(merged))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """A config.json's contents; keys a newer format added are filled with their defaults,
        so a run directory written before them still resumes."""
        data = {k: v for k, v in data.items() if k not in _LEGACY_KEYS}
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"config.json: unknown options {unknown} (written by a newer plasticnet?)")
        values = dict(data)
        for name in ("blocks_per_stage", "budget_per_stage"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resolved(
        self, device_type: str | None = None, world_size: int | None = None, versions: Mapping[str, Any] | None = None
    ) -> "TrainConfig":
        """Device-dependent defaults filled in, the run directory named, the run's facts recorded
        (by default this process's: the device `device` picks, torchrun's world size, versions)."""
        from plasticnet.training.distributed import device_type as type_of

        facts = run_facts()
        device_type = device_type or type_of(self.device)
        world_size = facts[0] if world_size is None else world_size
        versions = facts[1] if versions is None else versions
        sizes = DEVICE_DEFAULTS[device_type]
        changes: dict[str, Any] = {"world_size": world_size, "versions": dict(versions)}
        if self.base_width is None:
            changes["base_width"] = sizes["base_width"]
        if self.dataset == "synthetic":
            for split in ("train", "test"):
                if getattr(self, f"{split}_size") is None:
                    changes[f"{split}_size"] = sizes[f"synthetic_{split}_size"]
        changes.update(self._budgets())
        if self.drop == "threshold":
            changes["drop_count"] = "fraction"  # threshold drops every path below it: no count applies
        if self.out is None:
            changes["out"] = os.path.join("runs", f"{self.model}-{self.dataset}-s{self.seed}")
        return self.replace(**changes)

    def _budgets(self) -> dict[str, Any]:
        """budget_per_stage="auto" made explicit, and `budget` recorded as the active blocks or
        paths in all whenever the per-stage counts give it (so runs group by their budget)."""
        changes: dict[str, Any] = {}
        per_stage = self.budget_per_stage
        if per_stage == "auto":
            if self.plastic:
                per_stage = blocks_for_budget(self.budget or sum(ARCHITECTURES[self.arch][1]))
            else:
                per_stage = None  # a static model's blocks are spread that way already
            changes["budget_per_stage"] = per_stage
        counts = per_stage if self.plastic else self.blocks_per_stage
        if counts is not None and self.budget is None:
            changes["budget"] = sum(counts)
        return changes

    @property
    def plastic(self) -> bool:
        return self.model.startswith("plastic-")

    @property
    def arch(self) -> str:
        """The torchvision architecture name ("resnet18" for both resnet18 and plastic-resnet18)."""
        return self.model.removeprefix("plastic-")


# Keys of older config.json files that are no options any more: "resume" (the CLI flag) was saved too.
_LEGACY_KEYS = frozenset({"resume"})
MODELS = tuple(f"{prefix}{arch}" for prefix in ("plastic-", "") for arch in ("resnet18", "resnet34", "resnet50"))


def _known(options: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in options.items() if k in names}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _validate(config: TrainConfig) -> None:
    """Every check of an option's value, in one place: ConfigError naming the option."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{_flag(f.name)}: expected one of {list(choices)}, got {value!r}")
    if config.model not in MODELS:
        raise ConfigError(f"--model: expected one of {list(MODELS)}, got {config.model!r}")
    if config.dataset not in DATASETS:
        raise ConfigError(f"--dataset: expected one of {list(DATASETS)}, got {config.dataset!r}")
    positive = ("epochs", "batch_size", "eval_batch_size", "log_every", "rewire_interval", "image_size", "max_span")
    optional_positive = ("base_width", "train_size", "test_size", "budget", "threads")
    non_negative = ("eval_every_steps", "cutout", "val_size", "protect_rewires")
    for name in positive + optional_positive + non_negative:
        value = getattr(config, name)
        if value is None and name in optional_positive:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name in non_negative else 1):
            what = "an integer >= 0 (0: off)" if name in non_negative else "a positive integer"
            raise ConfigError(
                f"{_flag(name)}: expected {what}{' or None' if name in optional_positive else ''}, got {value!r}"
            )
    if config.drop_count != "fraction" and (
        isinstance(config.drop_count, bool) or not isinstance(config.drop_count, int) or config.drop_count < 1
    ):
        raise ConfigError(f"--drop-count: expected 'fraction' or a positive integer, got {config.drop_count!r}")
    for name in ("blocks_per_stage", "budget_per_stage"):
        counts = getattr(config, name)
        if name == "budget_per_stage" and counts == "auto":
            continue
        if counts is not None and (not counts or not all(isinstance(c, int) and c >= 1 for c in counts)):
            raise ConfigError(f"{_flag(name)}: expected positive integers, one per stage (e.g. 2,1,1,2), got {counts}")
    if config.blocks_per_stage is not None:
        if config.plastic:
            raise ConfigError("--blocks-per-stage: static models only; a plastic model takes --budget-per-stage")
        if config.budget is not None and config.budget != sum(config.blocks_per_stage):
            raise ConfigError(
                f"--budget {config.budget} and --blocks-per-stage {list(config.blocks_per_stage)} "
                f"disagree: the blocks add up to {sum(config.blocks_per_stage)}"
            )
    if config.budget_per_stage not in (None, "auto"):
        if not config.plastic:
            raise ConfigError("--budget-per-stage: plastic models only; a static model takes --blocks-per-stage")
        if config.budget is not None and config.budget != sum(config.budget_per_stage):
            raise ConfigError(
                f"--budget {config.budget} and --budget-per-stage {list(config.budget_per_stage)} "
                f"disagree: the stages add up to {sum(config.budget_per_stage)}"
            )
    if config.image_size != 32 and config.dataset != "imagefolder":
        raise ConfigError(
            f"--image-size applies to --dataset imagefolder only (got --dataset {config.dataset}); "
            f"the other datasets are 32x32"
        )
    for name, (expected, holds) in _RANGES.items():
        value = getattr(config, name)
        if value is None and name == "gate_weight_decay":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not holds(value)
        ):
            raise ConfigError(f"{_flag(name)}: expected a finite number {expected}, got {value!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2**63 - 1:
        raise ConfigError(f"--seed: expected an integer in [0, 2**63 - 1), got {config.seed!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(config.device)):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {config.device!r}")


# name -> (what is expected, the test of it): the ranges of the float options.
_RANGES = {
    "lr": ("> 0", lambda v: v > 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "gate_weight_decay": (">= 0, or None (--weight-decay)", lambda v: v >= 0),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "warmup_epochs": (">= 0", lambda v: v >= 0),
    "rewire_fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "rewire_end": ("in (0, 1]", lambda v: 0 < v <= 1),
}


def run_facts() -> tuple[int, dict[str, Any]]:
    """This process's world size (torchrun's WORLD_SIZE) and the versions a run records."""
    versions = {
        "plasticnet": __version__,
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
    }
    return int(os.environ.get("WORLD_SIZE", "1")), versions


def load_run_config(run_dir: str) -> TrainConfig:
    """The TrainConfig saved in RUN_DIR/config.json."""
    path = os.path.join(run_dir, "config.json")
    if os.path.isfile(run_dir):
        raise ConfigError(f"{run_dir} is a file; give the run directory that holds it")
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{run_dir}: no config.json there; is it a `plasticnet train` run directory?") from None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path} is not valid JSON ({error}); the run directory is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a run's options; the run directory is damaged")
    unresolved = [key for key in ("base_width", "out", "versions") if data.get(key) is None]  # set by resolved()
    if unresolved:
        raise ConfigError(f"{path} lacks {unresolved}, which every run records; the run directory is damaged")
    try:
        return TrainConfig.from_json(data)
    except (TypeError, ValueError) as error:  # a value of the wrong type that the checks do not reach
        if isinstance(error, ConfigError):
            raise ConfigError(f"{path}: {error}") from None
        raise ConfigError(f"{path} holds an option of the wrong type ({error}); the run directory is damaged") from None
