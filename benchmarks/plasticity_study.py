"""The controller study: which rewiring choices make a plastic ResNet pay on real data.

Each variant is one `plasticnet sweep` (its own ROOT/VARIANT) of plastic-resnet18 over the
given budgets and seeds, with the shared training flags plus the variant's own; `table` then
reads every variant's runs and writes ROOT/ablation.md and ROOT/ablation.json: the mean and
95 % t-interval over seeds of the final and best VALIDATION accuracy (the split every choice is
made on; test accuracy is reported beside it, never used to choose).

    python benchmarks/plasticity_study.py run ROOT [--variants a,b] [--budgets 8] [--seeds 0] \\
        --train --dataset fashion-mnist --data-dir DIR --val-size 5000 ...
    python benchmarks/plasticity_study.py table ROOT
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict

from plasticnet.training.report import load_runs, summarize

# name -> (what it changes, its flags). Every variant after "default" keeps each stage's count
# (--budget-per-stage), which the first study round showed to matter most; see docs/results.md.
PER_STAGE = ["--budget-per-stage", "auto"]  # the budget spread over the stages as the static twin's blocks
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("the controller as it was: one global budget", []),
    "per-stage": ("each stage keeps its count of active paths", [*PER_STAGE]),
    "protect-3": ("per-stage + a grown path is safe for 3 rewires (not 1)", [*PER_STAGE, "--protect-rewires", "3"]),
    "ramp": ("per-stage + a grown path fades in with gate 1 (not gate 0)", [*PER_STAGE, "--grown-gate", "ramp"]),
    "reactivate": ("per-stage + regrown paths keep their old weights", [*PER_STAGE, "--regrow", "reactivate"]),
    "gate-wd-0": ("per-stage + no weight decay on the gates", [*PER_STAGE, "--gate-weight-decay", "0"]),
    "probe-bn-frozen": (
        "per-stage + the probe leaves BN statistics alone",
        [*PER_STAGE, "--probe-batch-norm", "frozen"],
    ),
    "fraction-0.1": ("per-stage + rewire 10 % of the budget (not 30 %)", [*PER_STAGE, "--rewire-fraction", "0.1"]),
    "end-0.5": ("per-stage + stop rewiring at half of training (not 3/4)", [*PER_STAGE, "--rewire-end", "0.5"]),
    "gate-random": (
        "per-stage + the original PlasticNet's criteria: drop smallest |gate|, grow at random",
        [*PER_STAGE, "--drop", "gate", "--grow", "random"],
    ),
    "span-1": ("per-stage + only chain paths (j-1 -> j) as candidates", [*PER_STAGE, "--max-span", "1"]),
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
            "plastic-resnet18",
            "--budgets",
            ",".join(map(str, args.budgets)),
            "--seeds",
            ",".join(map(str, args.seeds)),
            "--train",
            *args.train,
            *VARIANTS[variant][1],
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
            row = {"variant": name, "budget": budget, "changes": VARIANTS.get(name, ("?", []))[0], "seeds": len(chosen)}
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("root")
    run_parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    run_parser.add_argument("--budgets", type=lambda s: [int(b) for b in s.split(",")], default=[8])
    run_parser.add_argument("--seeds", type=lambda s: [int(b) for b in s.split(",")], default=[0])
    run_parser.add_argument("--train", nargs=argparse.REMAINDER, default=[])
    table_parser = sub.add_parser("table")
    table_parser.add_argument("root")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
