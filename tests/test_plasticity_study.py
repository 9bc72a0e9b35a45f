"""benchmarks/plasticity_study.py: each variant is its own sweep, and the table reads validation
accuracy off every variant's runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_synthetic_flags

from plasticnet.training.report import load_runs

STUDY = Path(__file__).parents[1] / "benchmarks" / "plasticity_study.py"
TINY_TRAIN = tiny_synthetic_flags(
    train_size=96, val_size=32, test_size=32, epochs=2, batch_size=32, rewire_interval=2, progress=False
)


def study(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY), *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_variants_run_as_their_own_sweeps_and_the_table_ranks_them_by_validation_accuracy(tmp_path):
    variants = ["static", "tuned-drop-gate", "long-tuned"]
    done = study("run", str(tmp_path), "--variants", ",".join(variants), "--budgets", "6", "--train", *TINY_TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]

    static, drop_gate, long = (
        json.loads((tmp_path / v / f"{m}-b6-s0" / "config.json").read_text())
        for v, m in [
            ("static", "resnet18"),
            ("tuned-drop-gate", "plastic-resnet18"),
            ("long-tuned", "plastic-resnet18"),
        ]
    )
    assert static["model"] == "resnet18" and static["blocks_per_stage"] is None and static["budget"] == 6
    assert drop_gate["drop"] == "gate" and drop_gate["rewire_fraction"] == 0.1
    assert drop_gate["budget_per_stage"] == [2, 1, 1, 2]
    assert long["epochs"] == 15 and drop_gate["epochs"] == 2  # a variant's flags win over the shared ones

    assert study("table", str(tmp_path)).returncode == 0
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == sorted(variants, key=lambda v: -rows_by(rows, v)["final_val_acc"]["mean"])
    for variant in variants:
        (run,) = load_runs(str(tmp_path / variant))[0]
        row = rows_by(rows, variant)
        assert row["seeds"] == 1 and row["budget"] == 6
        assert row["final_val_acc"]["mean"] == pytest.approx(run.val_acc[-1])
        assert row["best_val_acc"]["mean"] == pytest.approx(max(run.val_acc))
        assert row["final_test_acc"]["mean"] == pytest.approx(run.final_test_acc)
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n") == 2 + len(variants) and "drop the smallest |gate|" in table


def rows_by(rows: list[dict], variant: str) -> dict:
    (row,) = [r for r in rows if r["variant"] == variant]
    return row


def test_an_unknown_variant_is_refused_naming_the_known_ones(tmp_path):
    done = study("run", str(tmp_path), "--variants", "static,nope")
    assert done.returncode == 2 and "unknown variant(s) ['nope']" in done.stderr and "tuned-ramp" in done.stderr
    assert not any(tmp_path.iterdir())
