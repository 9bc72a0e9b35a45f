"""`plasticnet sweep ROOT`: train every (model, budget, seed) combination of a grid, one after
another, each as a `plasticnet train` subprocess in its own run directory ROOT/NAME.

Every argument after `--train` goes unchanged to each run, e.g.

    plasticnet sweep runs/cmp --models resnet18,plastic-resnet18 --budgets 8,6,4 --seeds 0,1,2 \\
        --train --dataset cifar10 --epochs 30

A sweep killed at any moment continues where it stopped when the same command is run again:
finished runs are skipped, interrupted ones resumed from their last.pt, and a run that died
before its first checkpoint is started afresh. ROOT/sweep.json records the arguments, so a
ROOT never mixes the runs of two different sweeps.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import product

from tqdm import tqdm

from plasticnet.training import cli as train_cli
from plasticnet.training.checkpoint import atomic_write
from plasticnet.training.config import MODELS, load_run_config
from plasticnet.training.report import is_finished
from plasticnet.training.run_dir import LAST, METRICS, read_jsonl

SWEEP_FILE = "sweep.json"
LOG = "train.log"
# train options the sweep sets for each run itself
SET_PER_RUN = ("model", "budget", "seed", "out", "resume")
# what the sweep does with a run dir, as it says so
PROGRESS = {
    "trained": "training",
    "restarted": "training afresh (it stopped before its first checkpoint)",
    "resumed": "resuming from last.pt",
    "skipped": "finished already, skipped",
}


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid; budget None is the architecture's default (no --budget)."""

    model: str
    budget: int | None
    seed: int

    @property
    def name(self) -> str:
        budget = "" if self.budget is None else f"-b{self.budget}"
        return f"{self.model}{budget}-s{self.seed}"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep's arguments, as recorded in ROOT/sweep.json."""

    models: list[str]
    budgets: list[int] | None
    seeds: list[int]
    train_args: list[str]

    def runs(self) -> list[SweepRun]:
        return [SweepRun(*cell) for cell in product(self.models, self.budgets or [None], self.seeds)]

    def to_json(self) -> dict:
        return asdict(self)


class ChildRunFailed(RuntimeError):
    """A `plasticnet train` subprocess exited with an error, or left its run unfinished."""


def _comma_list(parse, what: str, minimum: int | None = None):
    """An argparse type: "a,b,c" -> [parse(a), parse(b), parse(c)], distinct, non-empty."""

    def convert(text: str) -> list:
        try:
            items = [parse(item) for item in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if minimum is not None and min(items) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} >= {minimum}, got {text!r}")
        duplicates = sorted(item for item, count in Counter(items).items() if count > 1)
        if duplicates:
            raise argparse.ArgumentTypeError(f"expected distinct {what}, got {text!r} (repeated: {duplicates})")
        return items

    return convert


def _model(name: str) -> str:
    if name not in MODELS:
        raise ValueError(name)
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example: plasticnet sweep runs/cmp --models resnet18,plastic-resnet18 --budgets 8,6,4 --seeds 0,1,2 "
        "--train --dataset cifar10 --epochs 30. Run the same command again to continue a sweep that stopped; "
        "then plasticnet report runs/cmp."
    )
    parser.add_argument("root", metavar="ROOT", help="the sweep's directory: ROOT/sweep.json and one run dir per run")
    parser.add_argument(
        "--models",
        type=_comma_list(_model, f"models out of {list(MODELS)}"),
        default="resnet18,plastic-resnet18",
        help="comma-separated models; the static twin of plastic-X is X",
    )
    parser.add_argument(
        "--budgets",
        type=_comma_list(int, "integers", minimum=1),
        default=None,
        help="comma-separated active residual blocks, each passed to its runs as --budget (None: no --budget, "
        "the architectures' defaults)",
    )
    parser.add_argument("--seeds", type=_comma_list(int, "integers"), default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--train",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="TRAIN_OPTION",
        help="every argument after --train goes to each `plasticnet train` run (not --model, --budget, --seed, "
        "--out, --resume: the sweep sets those); so --train must come last",
    )


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ValueErrors instead of usage text and an exit."""

    def error(self, message: str):
        raise ValueError(message)


def check_train_args(train_args: list[str]) -> None:
    """Refuse, before anything runs, train arguments that `plasticnet train` would reject or
    that would override what the sweep sets per run."""
    parser = _RaisingParser(prog="plasticnet train", add_help=False)
    train_cli.add_arguments(parser)
    try:
        namespace = parser.parse_args(train_args)
    except ValueError as error:
        raise ValueError(f"--train: {error}") from None
    overridden = sorted(getattr(namespace, train_cli.EXPLICIT) & set(SET_PER_RUN))
    if overridden:
        flags = ", ".join("--" + name for name in overridden)
        raise ValueError(
            f"--train: {flags} cannot be given: the sweep sets --model, --budget and --seed from its --models, "
            "--budgets and --seeds, and --out to ROOT/NAME"
        )


def claim_root(root: str, spec: SweepSpec) -> None:
    """Make ROOT this sweep's directory, or check that it already is."""
    path = os.path.join(root, SWEEP_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except ValueError:
            raise ValueError(f"{path} is not valid JSON; is {root} a sweep's directory?") from None
        differing = [key for key, value in spec.to_json().items() if saved.get(key) != value]
        if differing:
            changes = "; ".join(f"{key} {saved.get(key)} there, {getattr(spec, key)} now" for key in differing)
            raise ValueError(f"{root} belongs to another sweep ({changes}); use another ROOT or remove this one")
        return
    if os.path.isdir(root) and os.listdir(root):
        raise ValueError(f"{root} is not empty and has no {SWEEP_FILE}: not a sweep's directory; use another ROOT")
    os.makedirs(root, exist_ok=True)
    text = json.dumps(spec.to_json(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _finished(run_dir: str) -> bool:
    return is_finished(load_run_config(run_dir).to_json(), read_jsonl(os.path.join(run_dir, METRICS)))


def _clear_except_log(run_dir: str) -> None:
    """Empty a run dir that died before its first checkpoint (its logs, e.g. rewire events,
    would otherwise be continued by the fresh run), keeping train.log's history."""
    for entry in os.scandir(run_dir):
        if entry.name == LOG:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)


def _train_command(run: SweepRun, run_dir: str, train_args: list[str], resume: bool) -> list[str]:
    if resume:  # the run's config.json holds every other option
        options = ["--resume", run_dir]
    else:
        budget = [] if run.budget is None else ["--budget", str(run.budget)]
        options = [*train_args, "--model", run.model, *budget, "--seed", str(run.seed), "--out", run_dir]
    # --no-progress after the user's options, so it wins: the sweep's own bar is the one shown
    return [sys.executable, "-m", "plasticnet", "train", *options, "--no-progress"]


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(no output)"


def _train(run: SweepRun, run_dir: str, train_args: list[str], resume: bool) -> None:
    """Run one `plasticnet train` to the end, its output appended to RUN_DIR/train.log."""
    os.makedirs(run_dir, exist_ok=True)
    command = _train_command(run, run_dir, train_args, resume)
    log_path = os.path.join(run_dir, LOG)
    with open(log_path, "a") as log:
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        log.flush()
        # unbuffered, so that the log holds everything the run printed even if it is killed
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        returncode = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment
        ).returncode
    if returncode != 0:
        raise ChildRunFailed(f"run {run_dir} failed (exit {returncode}: {_last_line(log_path)}); log: {log_path}")
    if not _finished(run_dir):
        raise ChildRunFailed(f"run {run_dir} exited without its last epoch in {METRICS}; log: {log_path}")


def run_sweep(root: str, spec: SweepSpec) -> Counter:
    """Bring every run of `spec` under `root` to its last epoch; counts of what was done."""
    counts = Counter()
    runs = spec.runs()
    bar = tqdm(runs, desc="sweep", unit="run", disable=None)  # None: no bar when stderr is not a terminal
    for index, run in enumerate(bar, 1):
        run_dir = os.path.join(root, run.name)
        if not os.path.isdir(run_dir):
            action = "trained"
        elif not os.path.exists(os.path.join(run_dir, LAST)):
            _clear_except_log(run_dir)
            action = "restarted"
        elif _finished(run_dir):
            action = "skipped"
        else:
            action = "resumed"
        bar.set_postfix_str(f"{run.name}: {action}")
        tqdm.write(f"[{index}/{len(runs)}] {run_dir}: {PROGRESS[action]}")
        if action != "skipped":
            _train(run, run_dir, spec.train_args, resume=action == "resumed")
        counts[action] += 1
    bar.close()
    return counts


def run(args: argparse.Namespace) -> int:
    spec = SweepSpec(models=args.models, budgets=args.budgets, seeds=args.seeds, train_args=args.train)
    try:
        check_train_args(spec.train_args)
        claim_root(args.root, spec)
        counts = run_sweep(args.root, spec)
    except (ValueError, ChildRunFailed) as error:
        print(f"plasticnet sweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plasticnet sweep: interrupted; the same command continues the sweep", file=sys.stderr)
        return 130
    print(
        f"{sum(counts.values())} runs in {args.root}: {counts['trained'] + counts['restarted']} trained "
        f"({counts['restarted']} of them restarted), {counts['resumed']} resumed, {counts['skipped']} skipped "
        "(already finished)"
    )
    return 0
