"""`plasticnet train`: the options of TrainConfig as flags, recipes, resume, and one-line errors
for the mistakes a user can make (a bad option, missing data, a damaged checkpoint)."""

import argparse
import dataclasses
import sys
import typing

from plasticnet.training.checkpoint import CheckpointError
from plasticnet.training.config import RESUMABLE, ConfigError, TrainConfig, load_run_config, run_facts
from plasticnet.training.datasets import DataUnavailableError
from plasticnet.training.loop import Trainer, TrainingDiverged
from plasticnet.training.run_dir import RunDirError

EXPLICIT = "explicit_options"
USER_ERRORS = (ConfigError, DataUnavailableError, CheckpointError, RunDirError, TrainingDiverged)


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


def _counts(text: str) -> tuple[int, ...] | str:
    if text == "auto":
        return text
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,1,1,2, got {text!r}") from None
    return counts


def _parser_type(name: str, annotation) -> typing.Callable | None:
    """The argparse `type` of a TrainConfig field, from its annotation."""
    if name == "drop_count":
        return _drop_count
    if name in ("blocks_per_stage", "budget_per_stage"):
        return _counts
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0] if kinds[0] in (int, float) else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(**{EXPLICIT: frozenset()})
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("help") is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
        if hints[f.name] is bool:
            parser.add_argument(flag, action=_Switch, **kwargs)
            continue
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        parser_type = _parser_type(f.name, hints[f.name])
        if parser_type is not None:
            kwargs["type"] = parser_type
        parser.add_argument(flag, action=_Store, **kwargs)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        action=_Store,
        help="continue the run in RUN_DIR from its last.pt (only --epochs, --device, --backend, "
        "--compile, --threads, --progress, --log-every may change)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an --out that holds a run, deleting its checkpoints and logs first "
        "(without it, such an --out is refused)",
    )


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's full configuration: defaults, then the recipe, then explicit flags;
    device-dependent defaults filled in; versions and world size recorded."""
    options = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in (EXPLICIT, "resume")}
    return TrainConfig.from_overrides(options, getattr(args, EXPLICIT)).resolved()


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The saved config of --resume RUN_DIR, with the few options a continuation may change."""
    config = load_run_config(args.resume)
    explicit = getattr(args, EXPLICIT) - {"resume"}
    changed = sorted(k for k in explicit - RESUMABLE if getattr(args, k) != getattr(config, k))
    if changed:
        raise ConfigError(
            f"--resume {args.resume}: {', '.join('--' + k.replace('_', '-') for k in changed)} "
            f"cannot change when resuming (only {sorted(RESUMABLE)} can)"
        )
    world_size, _ = run_facts()
    return config.replace(out=args.resume, world_size=world_size, **{k: getattr(args, k) for k in explicit & RESUMABLE})


def parse_config(argv: list[str]) -> TrainConfig:
    """The resolved config of `plasticnet train ARGV` (for Trainer(config) from Python)."""
    parser = argparse.ArgumentParser(prog="plasticnet train")
    add_arguments(parser)
    return resolve_config(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        config = resume_config(args) if args.resume else resolve_config(args)
        trainer = Trainer(config, resume=bool(args.resume), overwrite=args.overwrite)
    except USER_ERRORS as error:
        print(f"plasticnet train: error: {error}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    except USER_ERRORS as error:
        print(f"plasticnet train: error: {error}", file=sys.stderr)
        return 2
    finally:
        trainer.close()
    if trainer.run_dir.writer:
        print(f"run directory: {config.out}")
    return 0
