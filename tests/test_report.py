"""`plasticnet report` on hand-written run directories: statistics against hand-computed values."""

import json
import math

import pytest

from plasticnet.cli import main as plasticnet_main
from plasticnet.training.report import Summary, summarize, write_report

T_975_2DF = 4.302653  # scipy.stats.t.ppf(0.975, 2), from a table


def write_run(
    root,
    name,
    *,
    model,
    seed,
    test_acc,
    budget=None,
    val_acc=None,
    epochs=None,
    images_per_s=None,
    active_parameters=1000,
    macs=2.5e6,
    budget_per_stage=None,
    blocks_per_stage=None,
):
    """A run directory as `plasticnet train` writes it; epochs defaults to the lines written."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {
        "model": model,
        "budget": budget,
        "seed": seed,
        "epochs": epochs or len(test_acc),
        "dataset": "synthetic",
        "val_size": 100 if val_acc else 0,
        "budget_per_stage": budget_per_stage,
        "blocks_per_stage": blocks_per_stage,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = []
    for epoch, accuracy in enumerate(test_acc, 1):
        record = {
            "epoch": epoch,
            "step": 10 * epoch,
            "train_loss": 1.0,
            "train_acc": 0.5,
            "test_loss": 1.0,
            "test_acc": accuracy,
            "images_per_s": images_per_s[epoch - 1] if images_per_s else 100.0,
            "active_paths": [[0, 1]],
        }
        if active_parameters is not None:
            record |= {"active_parameters": active_parameters, "macs": macs}
        if val_acc:
            record |= {"val_loss": 1.0, "val_acc": val_acc[epoch - 1]}
        lines.append(json.dumps(record) + "\n")
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    return run_dir


def read_report(*roots, out=None) -> dict:
    """report.json as `plasticnet report ROOT [ROOT ...] [--out OUT]` writes it (into OUT, by
    default the first ROOT)."""
    options = [] if out is None else ["--out", str(out)]
    assert plasticnet_main(["report", *map(str, roots), *options]) == 0
    return json.loads(((out or roots[0]) / "report.json").read_text())


def configuration(report: dict, model: str, budget=None) -> dict:
    (found,) = [c for c in report["configurations"] if c["model"] == model and c["budget"] == budget]
    return found


def test_summary_of_three_seeds_is_mean_std_and_t_interval(tmp_path):
    for seed, accuracy in enumerate([0.80, 0.82, 0.84]):
        write_run(tmp_path, f"resnet18-s{seed}", model="resnet18", seed=seed, test_acc=[0.5, accuracy])
    report = read_report(tmp_path)
    final = configuration(report, "resnet18")["final_test_acc"]
    half_width = T_975_2DF * 0.02 / math.sqrt(3)
    assert final["n"] == 3
    assert final["mean"] == pytest.approx(0.82)
    assert final["std"] == pytest.approx(0.02)
    assert final["ci95"] == pytest.approx([0.82 - half_width, 0.82 + half_width], abs=1e-6)
    markdown = (tmp_path / "report.md").read_text()
    assert "82.00 ± 2.00" in markdown
    assert f"[{100 * (0.82 - half_width):.2f}, {100 * (0.82 + half_width):.2f}]" in markdown
    assert "n/a" in markdown  # no validation split: no test accuracy at best val
    assert configuration(report, "resnet18")["best_val_test_acc"] is None


def test_one_value_has_a_mean_but_no_spread():
    assert summarize([0.7]) == Summary(n=1, mean=0.7, std=None, ci95=None)
    with pytest.raises(ValueError, match="at least one value"):
        summarize([])


def test_paired_differences_use_the_seeds_both_models_ran(tmp_path):
    for seed, accuracy in enumerate([0.80, 0.82, 0.84, 0.90]):  # seed 3: static only, left out of the pairs
        write_run(tmp_path, f"resnet18-b6-s{seed}", model="resnet18", budget=6, seed=seed, test_acc=[accuracy])
    for seed, accuracy in enumerate([0.85, 0.83, 0.88]):
        write_run(
            tmp_path, f"plastic-resnet18-b6-s{seed}", model="plastic-resnet18", budget=6, seed=seed, test_acc=[accuracy]
        )
    # another budget of the static model alone: no pair
    write_run(tmp_path, "resnet18-b4-s0", model="resnet18", budget=4, seed=0, test_acc=[0.7])
    report = write_report([str(tmp_path)])
    (difference,) = report.paired_differences
    assert (difference.plastic, difference.static, difference.budget) == ("plastic-resnet18", "resnet18", 6)
    assert difference.seeds == [0, 1, 2]
    # differences 0.05, 0.01, 0.04: mean 1/30; deviations 1/60, -7/300, 1/150 -> variance 13/30000
    final = difference.final_test_acc
    assert final.n == 3
    assert final.mean == pytest.approx(1 / 30)
    assert final.std == pytest.approx(math.sqrt(13 / 30000))
    half_width = T_975_2DF * math.sqrt(13 / 30000) / math.sqrt(3)
    assert final.ci95 == pytest.approx((1 / 30 - half_width, 1 / 30 + half_width), abs=1e-6)
    assert difference.best_val_test_acc is None
    static_b6 = configuration(read_report(tmp_path), "resnet18", 6)
    assert static_b6["seeds"] == [0, 1, 2, 3] and static_b6["final_test_acc"]["mean"] == pytest.approx(0.84)
    assert "| plastic-resnet18 | resnet18 | 6 | 3 | 3.33 ± 2.08 |" in (tmp_path / "report.md").read_text()


def test_best_validation_epoch_is_the_first_of_equal_ones(tmp_path):
    val = [0.5, 0.7, 0.7, 0.6]
    write_run(tmp_path, "resnet18-s0", model="resnet18", seed=0, test_acc=[0.4, 0.65, 0.9, 0.8], val_acc=val)
    write_run(tmp_path, "resnet18-s1", model="resnet18", seed=1, test_acc=[0.4, 0.5, 0.6, 0.7], val_acc=val[::-1])
    write_run(
        tmp_path, "plastic-resnet18-s0", model="plastic-resnet18", seed=0, test_acc=[0.1, 0.2, 0.3, 0.4], val_acc=val
    )
    report = read_report(tmp_path)
    assert [(r["name"], r["best_val_epoch"], r["best_val_test_acc"]) for r in report["runs"]] == [
        ("plastic-resnet18-s0", 2, 0.2),
        ("resnet18-s0", 2, 0.65),
        ("resnet18-s1", 2, 0.5),  # val 0.6, 0.7, 0.7, 0.5: epoch 2 again
    ]
    assert configuration(report, "resnet18")["best_val_test_acc"]["mean"] == pytest.approx(0.575)
    (difference,) = report["paired_differences"]
    assert difference["seeds"] == [0]
    assert difference["best_val_test_acc"] == {"n": 1, "mean": pytest.approx(0.2 - 0.65), "std": None, "ci95": None}


def test_images_per_second_leaves_out_the_first_epoch_unless_it_is_the_only_one(tmp_path):
    write_run(tmp_path, "resnet18-s0", model="resnet18", seed=0, test_acc=[0.1, 0.2, 0.3], images_per_s=[10, 100, 200])
    write_run(tmp_path, "resnet18-s1", model="resnet18", seed=1, test_acc=[0.1, 0.2, 0.3], images_per_s=[1, 300, 300])
    write_run(tmp_path, "resnet34-s0", model="resnet34", seed=0, test_acc=[0.1, 0.2, 0.3], images_per_s=[7, 8, 9])
    report = read_report(tmp_path)
    assert [r["images_per_s"] for r in report["runs"]] == [150, 300, 8.5]
    assert configuration(report, "resnet18")["images_per_s"]["mean"] == pytest.approx(225)
    (tmp_path / "single").mkdir()
    write_run(tmp_path / "single", "resnet18-s0", model="resnet18", seed=0, test_acc=[0.1], images_per_s=[42])
    assert read_report(tmp_path / "single")["runs"][0]["images_per_s"] == 42


def test_unfinished_run_is_listed_and_left_out(tmp_path):
    write_run(tmp_path, "resnet18-s0", model="resnet18", seed=0, test_acc=[0.5, 0.6, 0.7])
    write_run(tmp_path, "resnet18-s1", model="resnet18", seed=1, test_acc=[0.1, 0.2], epochs=3)
    (tmp_path / "not-a-run").mkdir()  # no config.json: not a run directory, ignored
    report = read_report(tmp_path)
    assert [r["name"] for r in report["runs"]] == ["resnet18-s0"]
    assert report["unfinished"] == [{"root": str(tmp_path), "name": "resnet18-s1", "epochs_done": 2, "epochs": 3}]
    assert configuration(report, "resnet18")["final_test_acc"] == {"n": 1, "mean": 0.7, "std": None, "ci95": None}
    assert "- `resnet18-s1`: 2 of 3 epochs" in (tmp_path / "report.md").read_text()


def test_plots_are_drawn_and_linked(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"resnet18-b4-s{seed}", model="resnet18", budget=4, seed=seed, test_acc=[0.3, 0.5])
        write_run(
            tmp_path, f"resnet18-b8-s{seed}", model="resnet18", budget=8, seed=seed, test_acc=[0.4, 0.6], macs=5e6
        )
    report = read_report(tmp_path)
    assert report["plots"] == ["pareto.png", "curves.png"]
    for name in report["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in (tmp_path / "report.md").read_text()
    assert configuration(report, "resnet18", 8)["macs"]["mean"] == 5e6
    assert "| resnet18 | 8 | n/a | 2 | 60.00 ± 0.00 |" in (tmp_path / "report.md").read_text()


def test_without_macs_there_is_no_pareto_plot(tmp_path):
    write_run(tmp_path, "resnet18-s0", model="resnet18", seed=0, test_acc=[0.3], active_parameters=None)
    report = read_report(tmp_path)
    assert report["plots"] == ["curves.png"] and not (tmp_path / "pareto.png").exists()
    assert configuration(report, "resnet18")["macs"] is None
    assert "pareto.png is not drawn" in (tmp_path / "report.md").read_text()


def one_line_error(capsys, argv) -> str:
    assert plasticnet_main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("plasticnet report: error: ")
    return error


def test_no_finished_runs_is_a_one_line_error(tmp_path, capsys):
    assert "no such directory" in one_line_error(capsys, ["report", str(tmp_path / "missing")])
    assert "no finished run directories" in one_line_error(capsys, ["report", str(tmp_path)])
    write_run(tmp_path, "resnet18-s0", model="resnet18", seed=0, test_acc=[0.1], epochs=2)
    assert "(1 unfinished: resnet18-s0)" in one_line_error(capsys, ["report", str(tmp_path)])
    assert not (tmp_path / "report.md").exists()


def test_runs_that_cannot_be_compared_are_refused(tmp_path, capsys):
    write_run(tmp_path, "a", model="resnet18", seed=0, test_acc=[0.1, 0.2])
    write_run(tmp_path, "b", model="resnet18", seed=0, test_acc=[0.1, 0.2])
    same = f"{tmp_path / 'a'} and {tmp_path / 'b'} are the same configuration and seed"
    assert same in one_line_error(capsys, ["report", str(tmp_path)])
    (tmp_path / "b" / "config.json").write_text(json.dumps({"model": "resnet18", "seed": 1, "epochs": 1}))
    assert "missing field 'budget'" in one_line_error(capsys, ["report", str(tmp_path)])
    write_run(tmp_path / "c", "x", model="resnet18", seed=0, test_acc=[0.1, 0.2])
    write_run(tmp_path / "c", "y", model="resnet18", seed=1, test_acc=[0.1])
    differ = f"runs differ in epochs ({tmp_path / 'c' / 'x'}: 2, {tmp_path / 'c' / 'y'}: 1)"
    assert differ in one_line_error(capsys, ["report", str(tmp_path / "c")])


def two_sweeps(tmp_path):
    """The static runs in one ROOT and the plastic runs (seeds 0, 1 of static's 0, 1, 2) in another."""
    static, plastic = tmp_path / "static", tmp_path / "plastic"
    for seed, accuracy in enumerate([0.80, 0.82, 0.84]):
        write_run(static, f"resnet18-b6-s{seed}", model="resnet18", budget=6, seed=seed, test_acc=[accuracy])
    for seed, accuracy in enumerate([0.83, 0.86]):
        write_run(
            plastic, f"plastic-resnet18-b6-s{seed}", model="plastic-resnet18", budget=6, seed=seed, test_acc=[accuracy]
        )
    return static, plastic


def test_two_roots_are_reported_together_and_pair_across_roots(tmp_path):
    static, plastic = two_sweeps(tmp_path)
    report = read_report(static, plastic)
    assert report["roots"] == [str(static), str(plastic)]
    assert configuration(report, "resnet18", 6)["runs"] == [str(static / f"resnet18-b6-s{s}") for s in range(3)]
    assert configuration(report, "plastic-resnet18", 6)["seeds"] == [0, 1]
    (difference,) = report["paired_differences"]
    assert difference["seeds"] == [0, 1]
    # differences 0.03, 0.04: mean 0.035, std sqrt(0.00005)
    assert difference["final_test_acc"]["mean"] == pytest.approx(0.035)
    assert difference["final_test_acc"]["std"] == pytest.approx(math.sqrt(0.00005))
    markdown = (static / "report.md").read_text()  # the first ROOT is the default --out
    assert markdown.startswith("# Sweep report: static, plastic\n")
    assert "| `resnet18-b6-s0` |" in markdown and "| `../plastic/plastic-resnet18-b6-s1` |" in markdown
    assert not (plastic / "report.md").exists()


def test_out_is_made_and_holds_the_whole_report(tmp_path):
    static, plastic = two_sweeps(tmp_path)
    out = tmp_path / "reports" / "cmp"
    report = read_report(static, plastic, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "pareto.png", "report.json", "report.md"]
    assert not (static / "report.json").exists() and not (plastic / "report.json").exists()
    assert len(report["runs"]) == 5
    assert "| `../../static/resnet18-b6-s2` |" in (out / "report.md").read_text()


def test_a_run_in_two_roots_is_an_error_naming_both_run_directories(tmp_path, capsys):
    static, plastic = two_sweeps(tmp_path)
    write_run(plastic, "again", model="resnet18", budget=6, seed=2, test_acc=[0.9])
    error = one_line_error(capsys, ["report", str(static), str(plastic), "--out", str(tmp_path / "out")])
    assert f"{static / 'resnet18-b6-s2'} and {plastic / 'again'} are the same configuration and seed" in error
    assert not (tmp_path / "out").exists()
    write_run(tmp_path / "longer", "resnet34-s0", model="resnet34", seed=0, test_acc=[0.1, 0.2])
    error = one_line_error(capsys, ["report", str(static), str(tmp_path / "longer")])
    assert f"runs differ in epochs ({static / 'resnet18-b6-s0'}: 1, {tmp_path / 'longer' / 'resnet34-s0'}: 2)" in error


def test_configurations_show_their_per_stage_counts(tmp_path, capsys):
    write_run(tmp_path, "plastic-b6", model="plastic-resnet18", budget=6, seed=0, test_acc=[0.5])
    write_run(
        tmp_path,
        "plastic-b5",
        model="plastic-resnet18",
        budget=5,
        seed=0,
        test_acc=[0.5],
        budget_per_stage=[2, 1, 1, 1],
    )
    write_run(tmp_path, "static-b5", model="resnet18", budget=5, seed=0, test_acc=[0.5], blocks_per_stage=[1, 1, 1, 2])
    write_run(tmp_path, "static-b6", model="resnet18", budget=6, seed=0, test_acc=[0.5])
    report = read_report(tmp_path)
    assert configuration(report, "plastic-resnet18", 5)["per_stage"] == [2, 1, 1, 1]
    assert configuration(report, "plastic-resnet18", 6)["per_stage"] is None
    assert configuration(report, "resnet18", 5)["per_stage"] == [1, 1, 1, 2]
    markdown = (tmp_path / "report.md").read_text()
    for row in (
        "| plastic-resnet18 | 5 | 2,1,1,1 |",
        "| plastic-resnet18 | 6 | global |",
        "| resnet18 | 5 | 1,1,1,2 |",
    ):
        assert row in markdown
    assert "| resnet18 | 6 | n/a |" in markdown
    # one configuration, two ways of spending its budget: not comparable as seeds of one configuration
    write_run(
        tmp_path,
        "plastic-b6-s1",
        model="plastic-resnet18",
        budget=6,
        seed=1,
        test_acc=[0.5],
        budget_per_stage=[2, 1, 1, 2],
    )
    error = one_line_error(capsys, ["report", str(tmp_path)])
    assert f"{tmp_path / 'plastic-b6'} and {tmp_path / 'plastic-b6-s1'} are plastic-resnet18 at budget 6" in error
    assert "different per-stage counts (None and (2, 1, 1, 2))" in error
