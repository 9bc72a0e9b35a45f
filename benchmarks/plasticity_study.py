"""The controller study: which rewiring choices make a plastic ResNet pay on real data.

Each variant is one `plasticnet sweep` (its own ROOT/VARIANT) of its model (plastic-resnet18, or
resnet18 for the static references) over the given budgets and seeds, with the shared training
flags plus the variant's own; `table` then reads every variant's runs and writes ROOT/ablation.md
and ROOT/ablation.json: the mean and 95 % t-interval over seeds of the final and best VALIDATION
accuracy (the split every choice is made on; test accuracy is reported beside it, never used to choose).

    python benchmarks/plasticity_study.py run ROOT [--variants a,b] [--budgets 8] [--seeds 0] \\
        --train --dataset fashion-mnist --data-dir DIR --val-size 5000 ...
    python benchmarks/plasticity_study.py table ROOT
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from plasticnet.training.report import load_runs, summarize


@dataclass(frozen=True)
class Variant:
    """One row of the study: what it changes, its extra training flags, and the model it trains."""

    changes: str
    flags: tuple[str, ...] = ()
    model: str = "plastic-resnet18"


# The budget spread over the stages as the static twin's blocks, which round 1 showed to matter.
PER_STAGE = ("--budget-per-stage", "auto")
# Round 1 ran at the trainer's former --rewire-fraction 0.3, given explicitly so the rows stay
# reproducible; round 2 changes one thing at a time on round 1's winner, TUNED.
ROUND_1 = ("--rewire-fraction", "0.3")
TUNED = (*PER_STAGE, "--rewire-fraction", "0.1")
LONG = ("--epochs", "15")  # three times the shared schedule: 35 rewires instead of 11

VARIANTS: dict[str, Variant] = {
    "static": Variant("no rewiring: the static ResNet of the same block count", model="resnet18"),
    # round 1
    "default": Variant("the controller as it was: one global budget, 30 %", ROUND_1),
    "per-stage": Variant("each stage keeps its count of active paths, 30 %", (*PER_STAGE, *ROUND_1)),
    "protect-3": Variant(
        "per-stage, 30 % + a grown path is safe for 3 rewires (not 1)", (*PER_STAGE, *ROUND_1, "--protect-rewires", "3")
    ),
    "ramp": Variant(
        "per-stage, 30 % + a grown path fades in with gate 1 (not gate 0)",
        (*PER_STAGE, *ROUND_1, "--grown-gate", "ramp"),
    ),
    "end-0.5": Variant(
        "per-stage, 30 % + stop rewiring at half of training (not 3/4)", (*PER_STAGE, *ROUND_1, "--rewire-end", "0.5")
    ),
    "fraction-0.1": Variant("per-stage + rewire 10 % of the budget (not 30 %): round 2's base", TUNED),
    # round 2: one change each on fraction-0.1
    "tuned-protect-3": Variant("a grown path is safe for 3 rewires (not 1)", (*TUNED, "--protect-rewires", "3")),
    "tuned-ramp": Variant("a grown path fades in with gate 1 (not gate 0)", (*TUNED, "--grown-gate", "ramp")),
    "tuned-reactivate": Variant(
        "a regrown path keeps its old weights (not fresh ones)", (*TUNED, "--regrow", "reactivate")
    ),
    "tuned-gate-wd-0": Variant("no weight decay on the gates", (*TUNED, "--gate-weight-decay", "0")),
    "tuned-probe-bn-frozen": Variant("the probe leaves BN statistics alone", (*TUNED, "--probe-batch-norm", "frozen")),
    "tuned-drop-gate": Variant("drop the smallest |gate| (not EMA |gate x contribution|)", (*TUNED, "--drop", "gate")),
    "tuned-drop-gradient": Variant("drop the smallest summed |weight gradient|", (*TUNED, "--drop", "gradient")),
    "tuned-gate-random": Variant(
        "the original PlasticNet's criteria: drop the smallest |gate|, grow at random",
        (*TUNED, "--drop", "gate", "--grow", "random"),
    ),
    "tuned-interval-10": Variant("rewire every 10 steps (not 25)", (*TUNED, "--rewire-interval", "10")),
    "tuned-interval-50": Variant("rewire every 50 steps (not 25)", (*TUNED, "--rewire-interval", "50")),
    "tuned-end-0.25": Variant("stop rewiring at a quarter of training (not 3/4)", (*TUNED, "--rewire-end", "0.25")),
    "tuned-span-1": Variant("only chain paths (j-1 -> j) as candidates", (*TUNED, "--max-span", "1")),
    "tuned-span-7": Variant("every path of the 8 nodes a candidate (span up to 7, not 3)", (*TUNED, "--max-span", "7")),
    # schedules long enough for many rewires
    "long-static": Variant("15 epochs, no rewiring", LONG, model="resnet18"),
    "long-tuned": Variant("15 epochs, fraction-0.1's controller", (*TUNED, *LONG)),
    "long-tuned-end-0.25": Variant(
        "15 epochs, rewiring only in the first quarter", (*TUNED, *LONG, "--rewire-end", "0.25")
    ),
}


def run(args: argparse.Namespace) -> int:
    for variant in args.variants:
        root = os.path.join(args.root, variant)
        command = [
            sys.executable,
            "-m",
            "plasticnet",
            "sweep",
            root,
            "--models",
            VARIANTS[variant].model,
            "--budgets",
            ",".join(map(str, args.budgets)),
            "--seeds",
            ",".join(map(str, args.seeds)),
            "--train",
            *args.train,
            *VARIANTS[variant].flags,
        ]
        print(" ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            return 2
    return 0


def table(args: argparse.Namespace) -> int:
    rows = []
    for name in sorted(os.listdir(args.root)):
        root = os.path.join(args.root, name)
        if not os.path.isdir(root):
            continue
        runs, _ = load_runs(root)
        if not runs:
            continue
        for budget in sorted({r.budget for r in runs}, reverse=True):
            chosen = [r for r in runs if r.budget == budget]
            row = {
                "variant": name,
                "budget": budget,
                "changes": VARIANTS[name].changes if name in VARIANTS else "?",
                "seeds": len(chosen),
            }
            row["final_val_acc"] = asdict(summarize([r.val_acc[-1] for r in chosen]))
            row["best_val_acc"] = asdict(summarize([max(r.val_acc) for r in chosen]))
            row["final_test_acc"] = asdict(summarize([r.final_test_acc for r in chosen]))
            rows.append(row)
    rows.sort(key=lambda r: (-r["budget"], -r["final_val_acc"]["mean"]))
    with open(os.path.join(args.root, "ablation.json"), "w") as f:
        json.dump(rows, f, indent=2)

    def cell(summary: dict) -> str:
        ci = summary["ci95"]
        spread = "" if ci is None else f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
        return f"{100 * summary['mean']:.2f}{spread}"

    lines = [
        "| variant | budget | what it changes | seeds | final val acc % | best val acc % | final test acc % |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['budget']} | {r['changes']} | {r['seeds']} | {cell(r['final_val_acc'])} | "
        f"{cell(r['best_val_acc'])} | {cell(r['final_test_acc'])} |"
        for r in rows
    ]
    with open(os.path.join(args.root, "ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _variant_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; expected names out of {list(VARIANTS)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("root")
    run_parser.add_argument("--variants", type=_variant_list, default=list(VARIANTS), help=f"out of {list(VARIANTS)}")
    run_parser.add_argument("--budgets", type=lambda s: [int(b) for b in s.split(",")], default=[8])
    run_parser.add_argument("--seeds", type=lambda s: [int(b) for b in s.split(",")], default=[0])
    run_parser.add_argument("--train", nargs=argparse.REMAINDER, default=[])
    table_parser = sub.add_parser("table")
    table_parser.add_argument("root")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
