"""Robust statistics in the report: a planted heavy-tailed arm flagged next to its
number, selection by a statistic over seeds (--select-stat) and whether it changes
the answer, tuning.png and profile.png by the data they draw, and the seeds-needed
command — followed on a real sweep, it adds exactly the missing seeds."""

import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

import fashionbn.analysis.plot as plot
from fashionbn.aggregate import aggregate, main
from fashionbn.analysis.robustness import robust_verdict
from fashionbn.analysis.selection import select
from fashionbn.analysis.stats import performance_profile
from fashionbn.analysis.table import read_sweep
from tests.conftest import REPO, make_job, report_of

CALM = [0.010, 0.012, 0.008, 0.011, 0.009, 0.013, 0.007, 0.010]
PLANTED = [*CALM, -0.20, -0.25]  # two collapsed seeds: mean < 0 < IQM


def planted_sweep(sweep: Path, gaps: list[float]) -> list[float]:
    """model × seed: baseline 0.80 + a little per seed, batchnorm that plus `gaps`;
    returns the gaps as the files hold them (test_acc batchnorm − baseline)."""
    held = []
    for seed, gap in enumerate(gaps):
        base = round(0.80 + seed / 1000, 4)
        make_job(sweep, ["model=baseline", f"seed={seed}"], [0.5, base])
        make_job(
            sweep, ["model=batchnorm", f"seed={seed}"], [0.5, round(base + gap, 4)]
        )
        held.append(round(base + gap, 4) - base)
    return held


def test_a_planted_heavy_tailed_arm_is_flagged_next_to_its_number(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    gaps = planted_sweep(sweep, PLANTED)
    aggregate([sweep])
    table = pd.read_csv(sweep / "comparisons.csv")
    last = table[table["epoch"] == 2].iloc[0]
    middle = sorted(gaps)[2:8]  # 10 gaps: 2 cut from each end
    assert last["iqm"] == pytest.approx(sum(middle) / 6)
    assert last["mean"] == pytest.approx(sum(gaps) / 10) and last["mean"] < 0
    assert last["median"] == pytest.approx(float(np.median(gaps)))
    assert bool(last["signs_differ"]) and bool(last["heavy_tailed"])
    kurtosis = stats.kurtosis(gaps, fisher=True, bias=False)
    row = next(line for line in report_of(sweep).splitlines()
               if line.startswith("| batchnorm − baseline | — | 2 |"))  # fmt: skip
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == f"{sum(gaps) / 10:+.4f}"  # the mean gap
    assert cells[7].startswith(f"{sum(middle) / 6:+.4f} [")  # IQM [bootstrap]
    assert cells[9] == (
        "**mean and IQM differ in sign**; heavy tails (excess kurtosis "
        f"{kurtosis:.2f}, 2 far-out pairs): read the IQM"
    )
    # epoch 1: every gap 0 (both 0.5): no flag
    first = next(line for line in report_of(sweep).splitlines()
                 if line.startswith("| batchnorm − baseline | — | 1 |"))  # fmt: skip
    assert [c.strip() for c in first.strip("|").split("|")][9] == "—"


def test_calm_gaps_are_not_flagged(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    planted_sweep(sweep, CALM)
    aggregate([sweep])
    assert "**mean and IQM differ in sign**" not in report_of(sweep)
    assert "heavy tails (" not in report_of(sweep)
    assert "not by the mean alone" not in report_of(sweep)


def test_the_verdict_says_when_the_mean_alone_would_mislead() -> None:
    cells = pd.DataFrame({
        "comparison": ["batchnorm − baseline"] * 3, "n": [10, 10, 10],
        "mean": [-0.01, 0.02, 0.03], "iqm": [0.01, 0.02, 0.025],
        "heavy_tailed": [True, False, True], "signs_differ": [True, False, False],
        "data.drop_last": [False, True, True],
        "evaluation": ["default", "default", "precise"], "budget": [5, 5, 5],
        "p_holm": [0.5, 0.01, 0.01], "p_test": ["t"] * 3,
    })  # fmt: skip
    assert robust_verdict(cells) == [
        "batchnorm − baseline, not by the mean alone: 2 cells of 3 have heavy-tailed "
        "gaps and in 1 cell the mean and the IQM differ in sign (drop_last=false, "
        "running statistics, epoch 5: mean -0.0100, IQM +0.0100); by the IQM the gap "
        "is positive in 3 of 3 cells."
    ]
    calm = cells.assign(heavy_tailed=False, signs_differ=False)
    assert robust_verdict(calm) == []


# --- selection by a statistic over seeds ---------------------------------------------


def lottery_sweep(sweep: Path) -> None:
    """batchnorm at lr 0.1: 8 seeds validate at 0.88, 2 collapse to 0.40 (mean
    0.784, median 0.88); at lr 0.03 every seed 0.80. The baseline: lr 0.1, 0.82.
    The mean picks 0.03, the median and the IQM pick 0.1."""
    for seed in range(10):
        collapsed = seed >= 8
        values = {("batchnorm", 0.1): 0.40 if collapsed else 0.88,
                  ("batchnorm", 0.03): 0.80, ("baseline", 0.1): 0.82}  # fmt: skip
        for (model, lr), value in values.items():
            make_job(sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}",
                             "data.val_size=100"], [0.5, value - 0.01],
                     val_accuracy=[0.5, value])  # fmt: skip


def test_the_statistic_that_selects_and_whether_it_changes_the_answer(tmp_path):
    sweep = tmp_path / "sweep"
    lottery_sweep(sweep)
    aggregate([sweep])
    report = report_of(sweep)
    assert "- batchnorm: optim.lr=0.03 (val_acc 0.8000)" in report
    # test accuracy is val − 0.01; by the mean: 0.79 − 0.81 every seed; by the
    # median and the IQM: 0.87 − 0.81 for 8 seeds, 0.39 − 0.81 for 2
    assert ("by the mean: optim.lr=0.03 against optim.lr=0.1, gap -0.0200 (IQM "
            "-0.0200, n=10)") in report  # fmt: skip
    gap = (8 * 0.06 - 2 * 0.42) / 10
    assert ("by the median: optim.lr=0.1 against optim.lr=0.1, gap "
            f"{gap:+.4f} (IQM +0.0600, n=10)") in report  # fmt: skip
    assert "**the statistic that selects changes the sign of the gap** (by" in report
    out = tmp_path / "by_iqm"
    assert main([str(sweep), "--select-stat", "iqm", "--out", str(out)]) == 0
    report = report_of(out)
    assert "Chosen per model by the interquartile mean val_acc" in report
    assert "- batchnorm: optim.lr=0.1 (iqm val_acc 0.8800)" in report
    chosen = pd.read_csv(out / "selection.csv").set_index("model")
    assert chosen.loc["batchnorm", "optim.lr"] == 0.1
    assert chosen.loc["batchnorm", "val_acc_iqm"] == pytest.approx(0.88)
    assert chosen.loc["batchnorm", "val_acc_mean"] == pytest.approx(0.784)
    assert "val_acc_iqm" not in pd.read_csv(sweep / "selection.csv")  # mean: as before


def test_a_select_stat_it_cannot_use_is_one_line(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    lottery_sweep(sweep)
    from fashionbn import api

    with pytest.raises(ValueError, match="select_stat='trimmed': choose one of mean, "
                       "median, iqm"):  # fmt: skip
        api.load_sweep(sweep, select_stat="trimmed")
    assert api.load_sweep(sweep, select_stat="median").selection.set_index(
        "model").loc["batchnorm", "optim.lr"] == 0.1  # fmt: skip
    with pytest.raises(SystemExit):
        main([str(sweep), "--select-stat", "trimmed"])
    assert "invalid choice: 'trimmed'" in capsys.readouterr().err


# --- the figures, by the data they draw ----------------------------------------------


def test_tuning_draws_the_median_band_and_every_seed_where_tails_are_heavy(tmp_path):
    sweep = tmp_path / "sweep"
    lottery_sweep(sweep)
    results = read_sweep([sweep]).results
    selection = select(results, ["model", "optim.lr"], "val_acc")
    figure = plot.tuning(selection.grid, selection.tuned, "val_acc", selection.last)
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    batchnorm = lines["batchnorm"]
    assert list(batchnorm.get_xdata()) == [0.03, 0.1]
    assert list(batchnorm.get_ydata()) == pytest.approx([0.80, 0.88])  # medians
    dots = [c for c in ax.collections if c.get_offsets().shape[0] and
            type(c).__name__ == "PathCollection"]  # fmt: skip
    drawn = sorted(map(tuple, np.vstack([d.get_offsets() for d in dots]).round(4)))
    expected = sorted([(0.1, 0.88)] * 8 + [(0.1, 0.40)] * 2 + [(0.03, 0.80)] * 10
                      + [(0.1, 0.82)] * 10)  # fmt: skip
    assert drawn == expected  # every seed, nothing else
    assert "median" in figure._suptitle.get_text()
    # calm values: the mean and ±1 std, no dots
    calm = selection.grid.assign(heavy_tailed=False)
    figure = plot.tuning(calm, selection.tuned, "val_acc", selection.last)
    line = {ln.get_label(): ln for ln in figure.axes[0].lines}["batchnorm"]
    assert list(line.get_ydata()) == pytest.approx([0.80, 0.784])  # means
    assert "mean" in figure._suptitle.get_text()
    assert not [c for c in figure.axes[0].collections
                if type(c).__name__ == "PathCollection"]  # fmt: skip


def test_the_performance_profile_by_hand() -> None:
    runs = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 2,
                         "test_acc": [0.9, 0.8, 0.8, 0.1, 0.85, 0.7]})  # fmt: skip
    table = performance_profile(runs, "model")
    taus = [0.1, 0.7, 0.8, 0.85, 0.9]
    a = table[table["model"] == "a"]
    assert list(a["tau"]) == taus
    assert list(a["share"]) == [1.0, 0.75, 0.75, 0.25, 0.25]
    b = table[table["model"] == "b"]
    assert list(b["share"]) == [1.0, 1.0, 0.5, 0.5, 0.0]
    figure = plot.profile(table, "model", "test_acc", "hand-made")
    drawn = {line.get_label(): line for line in figure.axes[0].lines}
    assert list(drawn["a (n=4)"].get_ydata()) == [1.0, 0.75, 0.75, 0.25, 0.25]
    assert list(drawn["b (n=2)"].get_xdata()) == taus


def test_the_aggregate_writes_the_profile_of_the_chosen_runs(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    lottery_sweep(sweep)
    aggregate([sweep])
    profile = pd.read_csv(sweep / "profile.csv")
    batchnorm = profile[profile["model"] == "batchnorm"]  # at lr 0.03: all 0.79
    assert set(batchnorm["n"]) == {10}
    shares = {round(t, 4): v for t, v in zip(batchnorm["tau"], batchnorm["share"])}
    assert shares == {0.79: 1.0, 0.81: 0.0}
    assert "![profile.png](profile.png)" in report_of(sweep)


# --- seeds where they are needed -----------------------------------------------------


def test_the_command_adds_the_missing_seeds_to_the_sweep_as_run(tmp_path) -> None:
    """From the sweep's multirun.yaml: its overrides, the seed list replaced by the
    seeds after the last one, its launcher, its dir."""
    sweep = tmp_path / "my sweep"
    planted_sweep(sweep, CALM[:5])
    task = ["model=baseline,batchnorm", "seed=0,1,2,3,4", "epochs=2"]
    choices = {"hydra/launcher": "batched_slurm"}
    given = ["hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}",
             "hydra.launcher.setup=[a,b]", "hydra.launcher.mem_gb=1"]  # fmt: skip
    saved = {"hydra": {"overrides": {"task": task, "hydra": given},
                       "runtime": {"choices": choices}}}  # fmt: skip
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    gaps = [round(0.80 + s / 1000 + g, 4) - round(0.80 + s / 1000, 4)
            for s, g in enumerate(CALM[:5])]  # fmt: skip
    q1, q3 = np.percentile(gaps, [25, 75])
    sd = (q3 - q1) / 1.349
    want = next(n for n in range(2, 1000)
                if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.001)  # fmt: skip
    assert main([str(sweep), "--precision", "0.001"]) == 0
    report = report_of(sweep)
    assert (f"- batchnorm − baseline, epoch 2: n=5 pairs; its robust spread {sd:.4f} "
            f"needs {want} for ±0.001: {want - 5} more.") in report  # fmt: skip
    expected = ("python -m fashionbn.run -m model=baseline,batchnorm epochs=2 "
                f"'seed=range(5,{want})' hydra/launcher=batched_slurm "
                "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 "
                f"'hydra.sweep.dir={sweep}'")  # fmt: skip
    assert expected in report.splitlines()
    assert main([str(sweep), "--precision", "0.5"]) == 0
    assert "Every cell has the seeds its spread needs for ±0.5." in report_of(sweep)


@pytest.mark.slow
def test_following_the_command_adds_exactly_the_missing_seeds(real_data_root,
                                                              tmp_path):  # fmt: skip
    """A real sweep of 4 seeds; a precision chosen by hand from its gaps so that
    6 pairs are needed; the report's command, run as printed, adds seeds 4 and 5
    for both models and nothing else; aggregating again uses all 6."""
    sweep = tmp_path / "sweep"
    base = [f"data.root={real_data_root}", "data.train_size=600", "data.test_size=500",
            "epochs=1", "threads=1", "device=cpu"]  # fmt: skip
    run = [sys.executable, "-m", "fashionbn.run", "-m", "model=baseline,batchnorm",
           "seed=0,1,2,3", *base, f"hydra.sweep.dir={sweep}"]  # fmt: skip
    assert subprocess.run(run, cwd=REPO, capture_output=True).returncode == 0
    metrics = {
        (p.name.split("model=")[1].split(",")[0], int(p.name.split("seed=")[1][0])):
        pd.read_csv(p / "metrics.csv")["test_acc"].iloc[-1]
        for p in sweep.iterdir() if p.is_dir()
    }  # fmt: skip
    gaps = [metrics[("batchnorm", s)] - metrics[("baseline", s)] for s in range(4)]
    q1, q3 = np.percentile(gaps, [25, 75])
    sd = (q3 - q1) / 1.349
    assert sd > 0
    t5, t6 = (stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) for n in (5, 6))
    precision = float((t5 + t6) / 2)  # 5 pairs are not enough, 6 are
    assert main([str(sweep), "--precision", repr(precision)]) == 0
    command = next(line for line in report_of(sweep).splitlines()
                   if line.startswith("python -m fashionbn.run"))  # fmt: skip
    assert "'seed=range(4,6)'" in command
    words = shlex.split(command)
    assert subprocess.run([sys.executable, *words[1:]], cwd=REPO,
                          capture_output=True).returncode == 0  # fmt: skip
    seeds = sorted((p.name.split("model=")[1].split(",")[0],
                    int(p.name.split("seed=")[1].split(",")[0]))
                   for p in sweep.iterdir() if p.is_dir())  # fmt: skip
    assert seeds == sorted((m, s) for m in ("baseline", "batchnorm") for s in range(6))
    assert main([str(sweep), "--precision", repr(precision)]) == 0
    table = pd.read_csv(sweep / "comparisons.csv")
    assert set(table["n"]) == {6}


def lr_grid(sweep: Path, lrs: dict[str, tuple], seeds=range(5)) -> None:
    """model -> the lrs it ran; test accuracy 0.80 (baseline) and 0.81 + a little
    per seed (batchnorm), validation the same."""
    for model, values in lrs.items():
        for lr in values:
            for seed in seeds:
                acc = 0.80 if model == "baseline" else round(0.81 + seed / 997, 4)
                make_job(sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}",
                                 "data.val_size=100"], [0.5, acc],
                         val_accuracy=[0.5, acc + lr / 10])  # fmt: skip


def commands_in(report: str) -> list[str]:
    return [line for line in report.splitlines()
            if line.startswith("python -m fashionbn.run")]  # fmt: skip


def test_the_command_covers_every_setting_the_job_dirs_hold(tmp_path) -> None:
    """Two commands ran into one dir (lr 0.05 and 0.2, then 0.1): multirun.yaml
    holds the second only, the job dirs hold all three; a sweep that is no grid
    gets a command per setting."""
    sweep = tmp_path / "grid"
    lr_grid(sweep, {"baseline": (0.05, 0.2, 0.1), "batchnorm": (0.05, 0.2, 0.1)})
    saved = {"hydra": {"overrides": {"task": ["model=baseline,batchnorm",
                                              "optim.lr=0.1"]}}}  # fmt: skip
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    assert main([str(sweep), "--precision", "0.0001"]) == 0
    found = commands_in(report_of(sweep))
    assert len(found) == 1
    words = shlex.split(found[0])
    assert words[4:6] == ["model=baseline,batchnorm", "optim.lr=0.05,0.1,0.2"]
    assert words[6:8] == ["data.val_size=100", "epochs=2"]  # make_job's epochs
    assert words[8].startswith("seed=range(5,")
    assert words[-1] == f"hydra.sweep.dir={sweep}"
    ragged = tmp_path / "ragged"
    lr_grid(ragged, {"baseline": (0.1,), "batchnorm": (0.1, 0.3)})
    assert main([str(ragged), "--precision", "0.0001"]) == 0
    found = [shlex.split(c)[4:6] for c in commands_in(report_of(ragged))]
    assert sorted(found) == [
        ["model=baseline", "optim.lr=0.1"],
        ["model=batchnorm", "optim.lr=0.1"],
        ["model=batchnorm", "optim.lr=0.3"],
    ]


def test_nothing_read_from_a_dir_makes_the_command_write_elsewhere(tmp_path) -> None:
    """A hydra.* override planted in a job's overrides.yaml, an overrides.yaml that
    is a symbolic link, a multirun.yaml that is a directory, a sweep dir whose name
    Hydra would parse: the report is written, with the count of seeds to add and
    no command."""
    sweep = tmp_path / "planted"
    lr_grid(sweep, {"baseline": (0.1,), "batchnorm": (0.1,)})
    (sweep / "multirun.yaml").mkdir()
    job = next(p for p in sweep.iterdir() if p.is_dir() and "seed=0" in p.name)
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    planted = [*overrides, "hydra.sweep.subdir=../../OUTSIDE"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(planted))
    assert main([str(sweep), "--precision", "0.0001"]) == 0
    report = report_of(sweep)
    assert not commands_in(report) and "OUTSIDE" not in report
    assert "seeds 5–" in report and "to every setting of the sweep, then aggregate " \
        "again." in report  # fmt: skip
    (job / ".hydra" / "overrides.yaml").unlink()
    (job / ".hydra" / "overrides.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(overrides))
    assert main([str(sweep), "--precision", "0.0001"]) == 0
    assert not commands_in(report_of(sweep))
    odd = tmp_path / "a,b"
    lr_grid(odd, {"baseline": (0.1,), "batchnorm": (0.1,)})
    assert main([str(odd), "--precision", "0.0001"]) == 0
    assert not commands_in(report_of(odd))


def test_a_spread_beyond_any_seed_count_is_said_not_called_enough(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    planted_sweep(sweep, CALM[:5])
    assert main([str(sweep), "--precision", "0.000001"]) == 0
    report = report_of(sweep)
    assert "pairs; its spread needs more than 100,000 for ±1e-06." in report
    assert "Every cell has the seeds" not in report
    assert "1 cell would need more than 100,000 seeds for ±1e-06" in report


def test_the_summary_gives_each_level_as_median_and_iqm(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    planted_sweep(sweep, PLANTED)
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv").set_index(["model", "epoch"])
    levels = [round(round(0.80 + s / 1000, 4) + g, 4) for s, g in enumerate(PLANTED)]
    row = summary.loc[("batchnorm", 2)]
    assert row["test_acc_median"] == pytest.approx(float(np.median(levels)))
    assert row["test_acc_iqm"] == pytest.approx(float(np.mean(sorted(levels)[2:8])))
    assert row["test_acc_mean"] == pytest.approx(float(np.mean(levels)))
    assert math.isnan(row["val_acc_iqm"])  # no validation split
