"""`plasticnet train`: options, recipes, resume, and one-line errors instead of tracebacks."""

import argparse
import os
import sys

import torch
import torchvision

from plasticnet import __version__
from plasticnet.ops import BACKENDS
from plasticnet.plasticity.criteria import DROP_CRITERIA, GROW_CRITERIA
from plasticnet.training.checkpoint import CheckpointError
from plasticnet.training.data import DATASETS, DataUnavailableError
from plasticnet.training.loop import OPTIMIZERS, SCHEDULES, Trainer, device_type
from plasticnet.training.models import MODELS, STEMS
from plasticnet.training.recipes import RECIPES
from plasticnet.training.run_dir import read_config

# Sizes a CPU finishes in minutes (`make train`); on CUDA the synthetic set matches CIFAR-10's.
CPU_DEFAULTS = {"base_width": 16, "synthetic_train_size": 2560, "synthetic_test_size": 512}
CUDA_DEFAULTS = {"base_width": 64, "synthetic_train_size": 50000, "synthetic_test_size": 10000}
# What --resume may change; everything else would make the continued run another experiment.
RESUMABLE_OVERRIDES = {"epochs", "device", "backend", "compile", "progress", "log_every", "resume"}
EXPLICIT = "explicit_options"


def _record_explicit(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, EXPLICIT, getattr(namespace, EXPLICIT, frozenset()) | {dest})


class _Store(argparse.Action):
    """store, remembering that the option was given (so a --recipe does not override it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _record_explicit(namespace, self.dest)


class _Switch(argparse.BooleanOptionalAction):
    """--x / --no-x, remembering that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record_explicit(namespace, self.dest)


def _drop_count(text: str) -> str | int:
    if text == "fraction":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'fraction' or a positive integer, got {text!r}")
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def option(*flags, **kwargs):
        parser.add_argument(
            *flags,
            action=_Switch if kwargs.get("type") is bool else _Store,
            **{k: v for k, v in kwargs.items() if k != "type" or v is not bool},
        )

    parser.set_defaults(**{EXPLICIT: frozenset()})
    option(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="a named set of options (see docs/reproducing-plasticnet.md); explicit flags win over it",
    )
    option(
        "--model",
        choices=MODELS,
        default="plastic-resnet18",
        help="plastic-* rewires its residual paths; resnet* are static torchvision-layout baselines",
    )
    option("--dataset", choices=DATASETS, default="cifar10", help="synthetic: procedural, offline, learnable")
    option("--data-dir", default="data", help="directory holding (or receiving) cifar-10-batches-py")
    option("--download", type=bool, default=True, help="download CIFAR-10 into --data-dir when it is missing")
    option("--epochs", type=int, default=30, help="epochs to train (with --resume: train up to this epoch)")
    option("--batch-size", type=int, default=128, help="per-process batch size")
    option("--eval-batch-size", type=int, default=500, help="batch size for evaluation")
    option("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd is Nesterov SGD")
    option("--lr", type=float, default=0.1, help="peak learning rate")
    option("--momentum", type=float, default=0.9, help="SGD momentum")
    option("--weight-decay", type=float, default=5e-4, help="weight decay")
    option("--label-smoothing", type=float, default=0.1, help="label smoothing of the cross-entropy")
    option(
        "--schedule",
        choices=SCHEDULES,
        default="cosine",
        help="lr after the warm-up: cosine or linear decay to 0 (one-cycle shapes), or constant",
    )
    option("--warmup-epochs", type=float, default=1.0, help="linear lr warm-up length")
    option("--augment", type=bool, default=True, help="random crop (reflect pad 4) and horizontal flip")
    option("--cutout", type=int, default=0, help="cutout square side in pixels (0: off)")
    option("--tta", type=bool, default=False, help="evaluate on the image and its mirror image")
    option(
        "--base-width",
        type=int,
        default=None,
        help=f"width of the first stage (None: {CUDA_DEFAULTS['base_width']} on CUDA, "
        f"{CPU_DEFAULTS['base_width']} on CPU)",
    )
    option("--stem", choices=STEMS, default="cifar", help="cifar: 3x3 conv; imagenet: 7x7/2 conv + max-pool")
    option("--budget", type=int, default=None, help="active paths (None: the matching ResNet's block count)")
    option(
        "--init",
        choices=("resnet", "random"),
        default=None,
        help="initial topology of a plastic model (None: resnet, the chain (j-1 -> j), unless --budget "
        "is given; then random)",
    )
    option("--max-span", type=int, default=3, help="longest path, in nodes")
    option(
        "--drop",
        choices=DROP_CRITERIA,
        default="taylor",
        help="drop the paths with the smallest EMA |gate*contribution| (taylor), |gate| (gate), summed "
        "|weight gradient| (gradient), or every |gate| below 0.5 (threshold)",
    )
    option(
        "--grow",
        choices=GROW_CRITERIA,
        default="probe",
        help="grow the inactive candidates with the largest probed |contribution| (probe) or at random",
    )
    option(
        "--drop-count",
        type=_drop_count,
        default="fraction",
        help="paths dropped per rewire: 'fraction' (RigL's cosine-decayed --rewire-fraction of the budget) "
        "or a number (the original PlasticNet dropped 1); --drop threshold ignores it",
    )
    option("--rewire-fraction", type=float, default=0.3, help="initial fraction of the budget rewired")
    option("--rewire-interval", type=int, default=100, help="optimizer steps between rewires")
    option("--rewire-end", type=float, default=0.75, help="stop rewiring after this fraction of training")
    option("--seed", type=int, default=0, help="seed of weights, data order, augmentation and rewiring")
    option("--out", default=None, help="run directory (None: runs/MODEL-DATASET-sSEED)")
    option("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR from its last.pt")
    option(
        "--train-size",
        type=int,
        default=None,
        help=f"training samples (None: all of CIFAR-10; synthetic: {CUDA_DEFAULTS['synthetic_train_size']} "
        f"on CUDA, {CPU_DEFAULTS['synthetic_train_size']} on CPU)",
    )
    option(
        "--test-size",
        type=int,
        default=None,
        help=f"test samples (None: all of CIFAR-10; synthetic: {CUDA_DEFAULTS['synthetic_test_size']} "
        f"on CUDA, {CPU_DEFAULTS['synthetic_test_size']} on CPU)",
    )
    option("--device", default="auto", help="auto (cuda when visible), cpu, cuda or cuda:N")
    option(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="residual_aggregate backend of every residual join (None: fastest available on the device)",
    )
    option("--compile", type=bool, default=False, help="torch.compile the stem, head and each path body")
    option("--eval-every-steps", type=int, default=0, help="also log test accuracy every N steps (0: off)")
    option("--log-every", type=int, default=20, help="progress-bar refresh interval in steps (one host sync)")
    option("--progress", type=bool, default=True, help="show a progress bar")


def _check_positive(config: dict) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "log_every", "rewire_interval", "base_width"):
        if config[name] is not None and config[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {config[name]}")
    for name in ("train_size", "test_size", "budget"):
        if config[name] is not None and config[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer or None, got {config[name]}")
    for name in ("eval_every_steps", "cutout"):
        if config[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 0 (0: off), got {config[name]}")


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's full configuration: defaults, then the recipe, then explicit flags;
    device-dependent defaults filled in; versions and world size recorded."""
    options = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != EXPLICIT}
    explicit = getattr(args, EXPLICIT)
    config = {"model_options": {}, **options}
    for key, value in RECIPES.get(args.recipe, {}).items():
        if key not in explicit:
            config[key] = value
    sizes = CUDA_DEFAULTS if device_type(config["device"]) == "cuda" else CPU_DEFAULTS
    if config["base_width"] is None:
        config["base_width"] = sizes["base_width"]
    if config["dataset"] == "synthetic":
        for split in ("train", "test"):
            if config[f"{split}_size"] is None:
                config[f"{split}_size"] = sizes[f"synthetic_{split}_size"]
    if config["drop"] == "threshold":
        config["drop_count"] = "fraction"  # threshold drops every path below it: no count applies
    if config["out"] is None:
        config["out"] = os.path.join("runs", f"{config['model']}-{config['dataset']}-s{config['seed']}")
    _check_positive(config)
    config["versions"] = {
        "plasticnet": __version__,
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
    }
    config["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return config


def resume_config(args: argparse.Namespace) -> dict:
    """The saved config of --resume RUN_DIR, with the few options a continuation may change."""
    config = read_config(args.resume)
    changed = sorted(k for k in getattr(args, EXPLICIT) - RESUMABLE_OVERRIDES if getattr(args, k) != config.get(k))
    if changed:
        raise ValueError(
            f"--resume {args.resume}: {', '.join('--' + k.replace('_', '-') for k in changed)} "
            f"cannot change when resuming (only {sorted(RESUMABLE_OVERRIDES - {'resume'})} can)"
        )
    for key in getattr(args, EXPLICIT) & RESUMABLE_OVERRIDES - {"resume"}:
        config[key] = getattr(args, key)
    config["out"] = args.resume
    config["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return config


def parse_config(argv: list[str]) -> dict:
    """The resolved config of `plasticnet train ARGV` (for Trainer(config) from Python)."""
    parser = argparse.ArgumentParser(prog="plasticnet train")
    add_arguments(parser)
    return resolve_config(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        config = resume_config(args) if args.resume else resolve_config(args)
        trainer = Trainer(config, resume=bool(args.resume))
        try:
            trainer.fit()
        finally:
            trainer.close()
    except (DataUnavailableError, CheckpointError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"plasticnet train: error: {error}", file=sys.stderr)
        return 2
    if trainer.run_dir.writer:
        print(f"run directory: {config['out']}")
    return 0
