"""The answer across the protocol (issue 16): collapses, the precise evaluation, a
budget cut from longer runs, and the robustness section — on hand-made job dirs whose
expected numbers are computed here."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fashionbn.analysis.plot
from fashionbn.aggregate import aggregate, main
from fashionbn.analysis.protocol import collapses
from fashionbn.analysis.stats import holm
from tests.conftest import hand_t_interval, make_job, report_of

# --- collapses ------------------------------------------------------------------------


def test_the_collapse_detector_flags_test_far_below_train_only() -> None:
    frame = pd.DataFrame(
        {"run": ["sick", "sick", "healthy", "healthy", "early"],
         "epoch": [1, 2, 1, 2, 1],
         "train_acc": [0.85, 0.9, 0.85, 0.88, 0.3],
         "test_acc": [0.84, 0.3, 0.83, 0.86, 0.5],
         "val_acc": [None, None, None, None, None]}
    )  # fmt: skip
    found = collapses(frame)
    assert found["run"].tolist() == ["sick"] and found["epoch"].tolist() == [2]
    # validation counts as well: selection looks at it
    frame.loc[3, "val_acc"] = 0.6
    assert sorted(collapses(frame)["run"]) == ["healthy", "sick"]


def test_a_collapsed_run_is_named_with_its_cause_and_counted(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for lr in (0.01, 0.3):
            for seed in (0, 1):
                test = 0.8 if (model, lr, seed) != ("batchnorm", 0.3, 1) else 0.41
                make_job(sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}",
                            "data.val_size=10000"], [0.7, test],
                    val_accuracy=[0.7, 0.8 + lr / 10],
                    columns={"train_acc": [0.7, 0.889]})  # fmt: skip
    assert main([str(sweep)]) == 0
    report = report_of(sweep)
    sick = sweep / "model=batchnorm,optim.lr=0.3,seed=1,data.val_size=10000"
    assert (
        f"- `{sick}`: epoch 2, train 0.8890, test 0.4100, val 0.8300 — likely "
        "BatchNorm evaluates with running statistics that lag weights moving this "
        "fast; the epoch ended on an incomplete batch of 16 samples, one noisy step "
        "just before the evaluation; try data.drop_last=true, precise_bn=true (then "
        "--metric precise), a smaller optim.lr."
    ) in report
    assert "- 1 run collapsed at the evaluated epoch" in report
    assert "Collapsed runs per group: model=batchnorm, optim.lr=0.3: 1 of 2 runs." in (
        report
    )
    assert "| batchnorm | 0.3 | 2 | 0.8300 ± 0.0000 | 0.6050 ± 0.2758 | 1 |" in report
    assert "| batchnorm | 0.01 | 2 | 0.8010 ± 0.0000 | 0.8000 ± 0.0000 | 0 |" in report


# --- the precise evaluation -----------------------------------------------------------


def precise_sweep(sweep: Path, with_precise: bool = True) -> dict:
    """Both models x seeds 0-2; BatchNorm's precise test accuracy differs from its
    default one. Returns (model, seed) -> (default, precise) test accuracy."""
    values = {}
    for seed in range(3):
        for model, default, precise in (("baseline", 0.80 + seed / 100, None),
                                        ("batchnorm", 0.70 + seed / 50,
                                         0.88 - seed / 100)):  # fmt: skip
            columns = {}
            if precise is not None and with_precise:
                columns = {"test_acc_precise": [precise - 0.1, precise],
                           "test_loss_precise": [0.5, 0.4]}  # fmt: skip
            extra = ["precise_bn=true"] if with_precise else []
            make_job(sweep, [f"model={model}", f"seed={seed}", *extra],
                [default - 0.1, default], columns=columns)  # fmt: skip
            values[(model, seed)] = (default, precise)
    return values


def test_metric_precise_evaluates_batchnorm_with_its_precise_columns(tmp_path):
    sweep = tmp_path / "sweep"
    values = precise_sweep(sweep)
    assert main([str(sweep), "--metric", "precise"]) == 0
    gaps = [values[("batchnorm", s)][1] - values[("baseline", s)][0] for s in range(3)]
    mean, low, high = hand_t_interval(gaps)
    report = report_of(sweep)
    assert (
        f"Gap batchnorm − baseline at epoch 2: {mean:+.4f} (95 % CI "
        f"[{low:+.4f}, {high:+.4f}]"
    ) in report
    assert "Evaluation: precise BatchNorm statistics (each BatchNorm layer's mean" in (
        report
    )
    assert main([str(sweep)]) == 0  # the default evaluation: the other numbers
    default_gaps = [values[("batchnorm", s)][0] - values[("baseline", s)][0]
                    for s in range(3)]  # fmt: skip
    assert f"Gap batchnorm − baseline at epoch 2: {np.mean(default_gaps):+.4f}" in (
        report_of(sweep)
    )
    assert "Evaluation: the default: BatchNorm evaluates with its running" in (
        report_of(sweep)
    )


def test_metric_precise_without_precise_runs_is_refused(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    precise_sweep(sweep, with_precise=False)
    assert main([str(sweep), "--metric", "precise"]) == 2
    assert (
        "error: --metric precise: 3 BatchNorm runs did not record precise statistics"
    ) in capsys.readouterr().err


# --- a budget cut from longer runs ----------------------------------------------------


def test_at_epoch_cuts_longer_runs_and_counts_each_run_once(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    curve = {0: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
             1: [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7]}  # fmt: skip
    for model, shift in (("baseline", 0.0), ("batchnorm", 0.1)):
        for seed, values in curve.items():
            make_job(sweep, [f"model={model}", f"seed={seed}", "epochs=8"],
                [v + shift for v in values])  # fmt: skip
        # the 5-epoch run of seed 0: the same numbers as the 8-epoch one's first 5
        make_job(sweep, [f"model={model}", "seed=0", "epochs=5"],
            [v + shift for v in curve[0][:5]])  # fmt: skip
        make_job(sweep, [f"model={model}", "seed=2", "epochs=3"], [0.1, 0.2, 0.3])
    # seed 3: the batchnorm run diverged at epoch 7 (fine at 5), the baseline at 4
    make_job(sweep, ["model=batchnorm", "seed=3", "epochs=8"], [0.5] * 7,
        status="diverged")  # fmt: skip
    make_job(
        sweep, ["model=baseline", "seed=3", "epochs=8"], [0.4] * 4, status="diverged"
    )
    make_job(sweep, ["model=baseline", "seed=4", "epochs=8"], [0.3] * 8)
    make_job(sweep, ["model=batchnorm", "seed=4", "epochs=8"], [0.45] * 6,
        status="diverged")  # fmt: skip
    assert main([str(sweep), "--at-epoch", "5"]) == 0
    results = pd.read_csv(sweep / "results.csv")
    assert set(results["epoch"]) == {1, 2, 3, 4, 5} and set(results["epochs"]) == {5}
    seeds = results.drop_duplicates("run").groupby("model")["seed"].apply(sorted)
    assert seeds.to_dict() == {"baseline": [0, 1, 4], "batchnorm": [0, 1, 3, 4]}
    report = report_of(sweep)
    gaps = [0.1, 0.1, 0.45 - 0.3]  # seeds 0, 1 and 4 at epoch 5
    assert f"Gap batchnorm − baseline at epoch 5: {np.mean(gaps):+.4f}" in report
    assert "Every number is at epoch 5 (--at-epoch) of the runs" in report
    assert "at epoch 5: 2 runs ended earlier and are left out" in report
    five = sweep / "model=baseline,seed=0,epochs=5"
    eight = sweep / "model=baseline,seed=0,epochs=8"
    assert f"- `{five}`: the first epochs of `{eight}`" in report  # counted once
    assert main([str(sweep), "--at-epoch", "9"]) == 2
    assert "--at-epoch 9: no run lasted 9 epochs" in capsys.readouterr().err


# --- does the answer depend on the protocol? ------------------------------------------


def robust_sweep(sweep: Path) -> None:
    """Both models x lr 0.1, 1 x drop_last false/true x seeds 0-2, 6 epochs. The
    baseline picks lr 1; BatchNorm picks 0.1 on its running statistics (worse than
    the baseline) and 1 on precise ones (better)."""
    for drop_last in ("false", "true"):
        for lr in (0.1, 1.0):
            for seed in range(3):
                epochs = range(1, 7)
                base = [0.80 + 0.02 * (lr == 1) + seed / 1000 + e / 1000
                        for e in epochs]  # fmt: skip
                make_job(sweep, ["model=baseline", f"optim.lr={lr}", f"seed={seed}",
                            f"data.drop_last={drop_last}", "data.val_size=100",
                            "epochs=6"], base,
                    val_accuracy=[0.80 + 0.02 * (lr == 1)] * 6)  # fmt: skip
                bn = [0.77 + seed / 500 + 2 * e / 1000 for e in epochs]
                precise = [0.87 + seed / 1000 - (lr != 1) * 0.1] * 6
                make_job(sweep, ["model=batchnorm", f"optim.lr={lr}", f"seed={seed}",
                            f"data.drop_last={drop_last}", "data.val_size=100",
                            "epochs=6", "precise_bn=true"], bn,
                    val_accuracy=[0.78 if lr != 1 else 0.70] * 6,
                    columns={"test_acc_precise": precise,
                             "val_acc_precise": [0.83 if lr != 1 else 0.86] * 6,
                             "test_loss_precise": [0.4] * 6,
                             "val_loss_precise": [0.4] * 6})  # fmt: skip


def test_the_robustness_section_has_a_row_per_cell_and_a_verdict(
    tmp_path, monkeypatch
) -> None:
    drawn = {}
    real = fashionbn.analysis.plot.robustness

    def keep(table):
        drawn["figure"] = real(table)
        return drawn["figure"]

    monkeypatch.setattr(fashionbn.analysis.plot, "robustness", keep)
    sweep = tmp_path / "sweep"
    robust_sweep(sweep)
    assert main([str(sweep)]) == 0
    table = pd.read_csv(sweep / "robustness.csv")
    assert len(table) == 2 * 2 * 2  # drop_last x budget (5, 6) x evaluation
    cell = table[(~table["data.drop_last"]) & (table["evaluation"] == "default")
                 & (table["budget"] == 5)].iloc[0]  # fmt: skip
    assert (cell["model_setting"], cell["reference_setting"]) == (
        "optim.lr=0.1", "optim.lr=1.0",
    )  # fmt: skip
    # at epoch 5 (not 6: BatchNorm's accuracy grows faster, so the gap depends on it)
    gaps = [(0.77 + s / 500 + 0.010) - (0.82 + s / 1000 + 0.005) for s in range(3)]
    assert cell["mean"] == pytest.approx(np.mean(gaps))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(hand_t_interval(gaps)[1:])
    precise = table[(table["evaluation"] == "precise")]
    assert set(precise["model_setting"]) == {"optim.lr=1.0"}
    assert (precise["mean"] > 0).all() and (table[table["evaluation"] == "default"][
        "mean"] < 0).all()  # fmt: skip
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p_value"].tolist()))
    assert (table["runs"] == 12).all() and (table["collapsed"] == 0).all()
    report = report_of(sweep)
    assert "## Does the answer depend on the protocol?" in report
    assert (
        "**Verdict.** batchnorm − baseline: the sign of the tuned gap is not the same "
        "in every cell: it flips with BatchNorm's evaluation statistics (negative in "
        "every cell with running statistics; positive in every cell with precise "
        "statistics); 4 of 8 cells' gaps differ from zero after Holm's correction "
        "(p < 0.05)."
    ) in report
    assert (
        "No tuned comparison across protocols: the runs differ in data.drop_last"
        in (report)
    )
    (ax,) = drawn["figure"].axes
    dots = [line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) == 1]
    assert sorted(dots) == pytest.approx(sorted(table["mean"]))


def test_a_sweep_with_one_protocol_has_no_robustness_section(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for seed in range(2):
            make_job(sweep, [f"model={model}", f"seed={seed}"], [0.5, 0.6])
    aggregate([sweep])
    report = report_of(sweep)
    assert "Does the answer depend" not in report
    assert not (sweep / "robustness.csv").exists()
    assert (
        "These gaps compare the models at one learning rate (optim.lr=0.001, the same "
        "for both, not tuned) under the notebook's protocol (the epoch's last "
        "incomplete batch kept, BatchNorm's running statistics); `experiment=robust` "
        "tests whether"
    ) in report


@pytest.mark.slow
def test_a_small_robust_preset_runs_and_reports_across_the_protocol(
    real_data_root, tmp_path
) -> None:
    """experiment=robust shrunk (tiny data, 6 epochs, 2 lrs, 2 seeds) as a real
    sweep and aggregate: every protocol cell, the verdict and the forest plot."""
    from tests.conftest import run_module

    sweep = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "experiment=robust", "epochs=6",
         "data.train_size=1300", "data.val_size=300", "data.test_size=300",
         "optim.lr=0.03,0.3", "seed=0,1", "threads=1", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.csv"))) == 2 * 2 * 2 * 2
    result = run_module(["fashionbn.aggregate", str(sweep)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(sweep / "robustness.csv")
    assert sorted(map(tuple, table[["data.drop_last", "evaluation", "budget"]]
                      .astype(str).values)) == sorted(
        (d, e, b) for d in ("False", "True") for e in ("default", "precise")
        for b in ("5", "6")
    )  # fmt: skip
    report = report_of(sweep)
    assert "**Verdict.** batchnorm − baseline: the sign of the tuned gap is" in report
    result = run_module(["fashionbn.aggregate", str(sweep), "--budgets", "2,6,50"],
                        tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(pd.read_csv(sweep / "robustness.csv")["budget"]) == {2, 6}
    assert (
        "Note: --budgets 2,6,50: the runs last 6 epochs at most, so the protocol "
        "section uses 2,6."
    ) in report_of(sweep)
    assert (sweep / "robustness.png").stat().st_size > 0
    bn = pd.read_csv(sweep / "results.csv").query("model == 'batchnorm'")
    assert bn["test_acc_precise"].notna().all()


def test_collapses_are_counted_when_only_models_differ(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for seed in range(3):
            sick = (model, seed) == ("batchnorm", 2)
            make_job(sweep, [f"model={model}", f"seed={seed}"],
                     [0.7, 0.3 if sick else 0.8],
                     columns={"train_acc": [0.7, 0.85]})  # fmt: skip
    aggregate([sweep])
    assert "Collapsed runs per group: model=batchnorm: 1 of 3 runs." in report_of(sweep)


def test_a_verdict_without_one_flipping_choice_names_the_uniform_ones() -> None:
    from fashionbn.analysis.robustness import verdict

    table = pd.DataFrame(
        {"comparison": "batchnorm − baseline", "data.drop_last": False,
         "evaluation": ["default", "precise", "default", "precise"],
         "budget": [5, 5, 20, 20], "mean": [-0.01, 0.02, 0.01, 0.03],
         "p_holm": [0.5, 0.01, 0.3, 0.2], "n": 3}
    )  # fmt: skip
    (sentence,) = verdict(table)
    assert sentence == (
        "batchnorm − baseline: the sign of the tuned gap is not the same in every "
        "cell, and no single choice explains the flips (negative in drop_last=false, "
        "running statistics, epoch 5; positive in drop_last=false, precise "
        "statistics, epoch 5; positive in drop_last=false, running statistics, epoch "
        "20; positive in drop_last=false, precise statistics, epoch 20; but every "
        "cell with precise statistics is positive, every cell with 20 epochs is "
        "positive); 1 of 4 cells' gaps differ from zero after Holm's correction "
        "(p < 0.05)."
    )
    same = table.assign(mean=[0.01, 0.02, 0.01, 0.03])
    assert verdict(same)[0].startswith(
        "batchnorm − baseline: the sign of the tuned gap is the same in every cell "
        "(positive in all 4 cells); 1 of 4"
    )


def test_a_cell_of_one_seed_pair_does_not_count_in_the_verdict() -> None:
    """A partly finished protocol sweep: a cell whose gap rests on one pair has no
    spread to judge its sign by; it is left out of the verdict, and said so."""
    from fashionbn.analysis.robustness import verdict

    table = pd.DataFrame(
        {"comparison": "batchnorm − baseline", "data.drop_last": False,
         "evaluation": ["default", "precise", "default", "precise"],
         "budget": [5, 5, 20, 20], "mean": [0.01, 0.02, -0.01, 0.03],
         "p_holm": [0.5, 0.01, 1.0, 0.2], "n": [3, 3, 1, 3]}
    )  # fmt: skip
    assert verdict(table) == [
        "batchnorm − baseline: the sign of the tuned gap is the same in every cell "
        "(positive in all 3 cells) (1 cell with fewer than 2 seed pairs is not "
        "counted); 1 of 3 cells' gaps differ from zero after Holm's correction "
        "(p < 0.05)."
    ]
    assert verdict(table.assign(n=1)) == [
        "batchnorm − baseline: no cell has 2 or more seed pairs, too few to say "
        "whether the sign of the gap depends on the protocol."
    ]


def test_budgets_beyond_the_runs_say_there_is_no_protocol_section(tmp_path):
    sweep = tmp_path / "sweep"
    robust_sweep(sweep)
    assert main([str(sweep), "--budgets", "99"]) == 0
    report = report_of(sweep)
    assert (
        "--budgets 99: the runs last 6 epochs at most, so there is no protocol "
        "section (give budgets up to 6)"
    ) in report
    assert "## Does the answer depend on the protocol?" not in report


def test_a_protocol_sweep_without_tuning_compares_the_models_as_they_ran(tmp_path):
    """-m model=baseline,batchnorm data.drop_last=false,true precise_bn=true seed=...:
    no hyperparameter to tune, so each cell pairs the runs as they are."""
    sweep = tmp_path / "sweep"
    for drop_last in ("false", "true"):
        for seed in range(3):
            make_job(sweep, ["model=baseline", f"data.drop_last={drop_last}",
                        f"seed={seed}"], [0.5, 0.6 + seed / 100])  # fmt: skip
            bn = 0.7 + seed / 50 + (drop_last == "true") / 10
            make_job(sweep, ["model=batchnorm", f"data.drop_last={drop_last}",
                        f"seed={seed}", "precise_bn=true"], [0.6, bn],
                columns={"test_acc_precise": [0.6, bn + 0.05]})  # fmt: skip
    aggregate([sweep])
    table = pd.read_csv(sweep / "robustness.csv")
    assert len(table) == 2 * 2  # drop_last x evaluation, one budget (2 epochs)
    row = table[(table["data.drop_last"]) & (table["evaluation"] == "precise")].iloc[0]
    gaps = [0.7 + s / 50 + 0.1 + 0.05 - (0.6 + s / 100) for s in range(3)]
    assert row["mean"] == pytest.approx(np.mean(gaps))
    assert (row["model_setting"], row["model_test"]) == (
        "as run", pytest.approx(np.mean([0.85 + s / 50 for s in range(3)])),
    )  # fmt: skip
    report = report_of(sweep)
    assert (
        "| true | precise | 2 | batchnorm − baseline | as run → 0.8700 | as run → "
        "0.6100 |"
    ) in report
    assert "batchnorm − baseline: the sign of the gap is the same in every cell" in (
        report
    )


def test_a_protocol_cell_that_cannot_select_is_named(tmp_path) -> None:
    """A robust sweep combined with runs without a validation split: the cells they
    join cannot select (two validation sets), and the report says which and why."""
    sweep = tmp_path / "sweep"
    robust_sweep(sweep)
    for model in ("baseline", "batchnorm"):
        make_job(
            tmp_path / "plain", [f"model={model}", "seed=0", "epochs=6"], [0.5] * 6
        )
    aggregate([sweep, tmp_path / "plain"], out_dir=tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        "Note: protocol cell drop_last=false, running statistics, epoch 5 left out: No "
        "tuned comparison: the runs differ in data.split_seed, data.val_size; a "
        "selection needs one validation set for all of them."
    ) in report
    table = pd.read_csv(tmp_path / "out" / "robustness.csv")
    assert set(table["data.drop_last"]) == {True}  # only the cells that could select
