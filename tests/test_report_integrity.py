"""Every number the report prints is right (issue 15): hand-made job dirs whose
expected numbers are computed here, by hand, never by the code under test."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fashionbn.analysis.plot
from fashionbn.aggregate import aggregate, main
from fashionbn.analysis.pairing import PairingError, paired_gaps
from fashionbn.analysis.table import read_sweep
from tests.conftest import (
    REPO,
    T_975,
    hand_t_interval,
    make_job,
    make_job_dir,
    report_of,
)


def t_line(gaps: list[float]) -> tuple[float, float, float]:
    return hand_t_interval(gaps)


# --- 1: the tuned gap pairs each model at the epoch it was chosen at ---------------


def test_the_tuned_gap_takes_each_model_at_its_own_chosen_epoch(tmp_path) -> None:
    """`epochs` tuned: baseline's validation picks epochs=3, batchnorm's epochs=1.
    The tuned gap is batchnorm's epoch 1 minus baseline's epoch 3, seed by seed,
    not both at the shorter run's last epoch."""
    sweep = tmp_path / "sweep"
    test = {  # (model, epochs) -> test accuracy per seed at each epoch
        ("baseline", 1): [[0.30], [0.32], [0.31]],
        ("baseline", 3): [[0.20, 0.5, 0.80], [0.25, 0.5, 0.84], [0.22, 0.5, 0.83]],
        ("batchnorm", 1): [[0.81], [0.82], [0.86]],
        ("batchnorm", 3): [[0.70, 0.7, 0.75], [0.71, 0.7, 0.74], [0.72, 0.7, 0.73]],
    }
    val = {("baseline", 1): 0.3, ("baseline", 3): 0.8, ("batchnorm", 1): 0.85,
           ("batchnorm", 3): 0.75}  # fmt: skip
    chosen = {("baseline", 3), ("batchnorm", 1)}
    for (model, epochs), per_seed in test.items():
        for seed, accuracy in enumerate(per_seed):
            # the settings not chosen run other seeds: a seed's 1-epoch run with
            # other numbers than its 3-epoch run's first epoch would be the same run
            # with other numbers (refused: tests/test_no_lost_runs.py)
            seed = seed if (model, epochs) in chosen else seed + 10
            make_job(sweep, [f"model={model}", f"epochs={epochs}", f"seed={seed}",
                        "data.val_size=100"], accuracy,
                val_accuracy=[val[(model, epochs)]] * epochs)  # fmt: skip
    aggregate([sweep])
    gaps = [
        test[("batchnorm", 1)][s][0] - test[("baseline", 3)][s][2] for s in range(3)
    ]
    mean, low, high = t_line(gaps)
    assert (
        f"Gap batchnorm − baseline (each at its best) at epoch 1 (baseline at epoch "
        f"3): {mean:+.4f} (95 % CI [{low:+.4f}, {high:+.4f}], paired t-interval over "
        "n=3 seeds"
    ) in report_of(sweep)
    table = pd.read_csv(sweep / "comparisons.csv")
    tuned = table[table["comparison"].str.endswith("(each at its best)")].iloc[0]
    assert (tuned["epoch"], tuned["epoch_reference"]) == (1, 3)
    assert tuned["mean"] == pytest.approx(mean)


# --- 2: a pair is one run of each model, matched by seed value ----------------------


def test_pairs_are_matched_by_seed_value_not_by_dir_order(tmp_path) -> None:
    """Seed sets whose name order (10 < 11 < 2 < 3) differs from their value order and
    from each other: only seeds 3 and 10 are pairs."""
    sweep = tmp_path / "sweep"
    baseline = {2: 0.50, 10: 0.40, 3: 0.60}
    batchnorm = {3: 0.90, 10: 0.45, 11: 0.20}
    for model, accuracy in (("baseline", baseline), ("batchnorm", batchnorm)):
        for seed, value in accuracy.items():
            make_job(sweep, [f"model={model}", f"seed={seed}"], [value - 0.1, value])
    aggregate([sweep])
    gaps = [batchnorm[3] - baseline[3], batchnorm[10] - baseline[10]]
    mean, low, high = t_line(gaps)
    assert (
        f"Gap batchnorm − baseline at epoch 2: {mean:+.4f} (95 % CI [{low:+.4f}, "
        f"{high:+.4f}], paired t-interval over n=2 seeds"
    ) in report_of(sweep)


def test_two_runs_claiming_one_pair_are_refused_not_averaged() -> None:
    results = pd.DataFrame(
        {"run": ["a", "b", "c"], "model": ["baseline", "baseline", "batchnorm"],
         "seed": 0, "epoch": 1, "test_acc": [0.2, 0.4, 0.9]}
    )  # fmt: skip
    with pytest.raises(PairingError, match="model=baseline has 2 runs with seed=0, "):
        paired_gaps(results, ["model"])


# --- 4: the report says what each arm is, and flags arms that are one network --------


def test_two_names_for_one_network_are_described_and_flagged(tmp_path, capsys):
    """`-m model=baseline,batchnorm model.norm=layernorm` trains two LayerNorm MLPs."""
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for seed in range(2):
            make_job(sweep, [f"model={model}", "model.norm=layernorm", f"seed={seed}"],
                [0.5, 0.6 + seed / 10])  # fmt: skip
    aggregate([sweep])
    report = report_of(sweep)
    described = (
        "model.hidden=[64, 32], model.norm=layernorm, model.norm_placement=before, "
        "model.activation=relu, model.init=default, model.norm_eps=1e-05"
    )
    assert f"baseline = {described}; batchnorm = {described}." in report
    warning = (
        "model=baseline and model=batchnorm are the same network "
        f"({described}): the name is only a label"
    )
    assert f"**Warning:** {warning}" in report
    assert warning in capsys.readouterr().err


def test_different_networks_are_not_flagged(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        make_job(sweep, [f"model={model}", "seed=0"], [0.5, 0.6])
    aggregate([sweep])
    assert "same network" not in report_of(sweep)
    assert "model.norm=batchnorm, model.norm_placement=before" in report_of(sweep)


# --- 5: a missing or doubtful result says why ---------------------------------------


def grid(sweep: Path, values: dict, epochs: int = 2, **kw) -> None:
    """(model, lr, seed) -> (val_acc, test_acc) at the last epoch."""
    for (model, lr, seed), (val, test) in values.items():
        make_job(sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}",
                    "data.val_size=100"], [test - 0.1, test],
            val_accuracy=[val - 0.1, val], **kw)  # fmt: skip


def test_no_shared_seed_between_the_chosen_settings_is_said(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    grid(sweep, {("baseline", lr, s): (0.5 + lr, 0.5) for lr in (0.1, 0.2)
                 for s in (0, 1, 2)})  # fmt: skip
    grid(sweep, {("batchnorm", lr, s): (0.8 - lr, 0.8) for lr in (0.1, 0.2)
                 for s in (3, 4)})  # fmt: skip
    assert main([str(sweep)]) == 0
    assert (
        "No tuned gap: the chosen settings share no seed with model=baseline's, so "
        "there is no pair to compare (baseline ran seed 0, 1, 2; batchnorm ran seed "
        "3, 4)."
    ) in report_of(sweep)


def test_an_edge_beyond_which_runs_diverged_says_so(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    grid(sweep, {("baseline", lr, s): (0.5 + lr, 0.5) for lr in (0.01, 0.1)
                 for s in (0, 1)})  # fmt: skip
    grid(sweep, {("batchnorm", lr, s): (0.8 - lr, 0.8) for lr in (0.01, 0.1, 1.0)
                 for s in (0, 1)})  # fmt: skip
    for seed in (0, 1):  # the baseline at lr 1 and 3 diverged in epoch 1
        for lr in (1.0, 3.0):
            make_job(sweep, ["model=baseline", f"optim.lr={lr}", f"seed={seed}",
                        "data.val_size=100", "epochs=2"], [0.1], status="diverged",
                val_accuracy=[0.1])  # fmt: skip
    aggregate([sweep])
    report = report_of(sweep)
    assert (
        "baseline's best optim.lr=0.1 is the largest that trained without "
        "diverging: optim.lr=1, 3 was tried and diverged (see Diverged runs)"
    ) in report
    assert "baseline's best optim.lr=0.1 is the largest tried" not in report
    # batchnorm's own edge (0.01, nothing smaller tried) still asks for a wider grid
    assert "batchnorm's best optim.lr=0.01 is the smallest tried: widen the grid" in (
        report
    )


def test_a_tie_in_validation_accuracy_is_said(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    grid(sweep, {("baseline", lr, s): ((0.7 if lr < 1 else 0.6) + s / 100, 0.5 + lr)
                 for lr in (0.01, 0.1, 1.0) for s in (0, 1)})  # fmt: skip
    grid(sweep, {("batchnorm", lr, s): (0.8 - lr, 0.8) for lr in (0.01, 0.1)
                 for s in (0, 1)})  # fmt: skip
    aggregate([sweep])
    assert (
        "baseline: optim.lr=0.01 and optim.lr=0.1 tie at mean val_acc 0.7050; the "
        "first in sorted order (optim.lr=0.01) was taken, the others would do as well"
    ) in report_of(sweep)
    assert report_of(sweep).count("tie at mean") == 1  # batchnorm's best is alone


def diagnostic_rows(steps: list[int], layers: list[str], value: float) -> list[dict]:
    quantities = ["act_in_p15", "act_in_p50", "act_in_p85", "act_in_std", "grad_norm"]
    rows = [{"step": step, "epoch": int(step > 0), "layer": layer, "quantity": q,
             "value": value + step / 10 + int(layer)}
            for step in steps for layer in layers for q in quantities]  # fmt: skip
    rows += [{"step": step, "epoch": int(step > 0), "layer": "all", "quantity": q,
              "value": value} for step in steps
             for q in ("loss_range", "grad_change", "beta_smoothness")]  # fmt: skip
    return rows


def test_points_measured_by_fewer_seeds_say_so(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for seed, steps in ((0, [0, 10]), (1, [0, 5, 10, 15])):
        make_job(sweep, ["model=baseline", f"seed={seed}", "diagnostics=on"],
                 [0.5, 0.6],
                 diagnostics=diagnostic_rows(steps, ["1", "2"], 1.0))  # fmt: skip
    aggregate([sweep])
    assert (
        "- model=baseline (n=1–2 per step: its runs measured different steps "
        "(another diagnostics.every_steps or run length), so some points rest on 1 "
        "seed only): from step 0 to step 15"
    ) in report_of(sweep)


def test_models_of_different_depths_each_use_their_own_last_layer(
    tmp_path, monkeypatch
) -> None:
    drawn = capture_figures(monkeypatch)
    sweep = tmp_path / "sweep"
    for model, hidden, layers in (("baseline", "[8,4]", ["1", "2"]),
                                  ("batchnorm", "[8]", ["1"])):  # fmt: skip
        for seed in (0, 1):
            make_job(sweep, [f"model={model}", f"model.hidden={hidden}", f"seed={seed}",
                        "diagnostics=on"], [0.5, 0.6],
                diagnostics=diagnostic_rows([0, 10], layers, 1.0))  # fmt: skip
    aggregate([sweep])
    why = report_of(sweep).split("## Why")[1].split("## Summary")[0]
    assert "nan" not in why
    # batchnorm's last hidden layer is 1: p50 = 1.0 + step / 10 + 1
    assert (
        "- model=batchnorm (n=2): from step 0 to step 10, the input "
        "to its last hidden layer's (1) activation (unit 0) moved its median from "
        "+2.000 to +3.000"
    ) in why
    assert "layer's (2) activation (unit 0) moved its median from +3.000 to +4.000" in (
        why
    )
    panels = [ax.get_title() for ax in drawn["layer_inputs"].axes if ax.get_visible()]
    assert panels == ["model=baseline · hidden layer 2",
                      "model=batchnorm · hidden layer 1"]  # fmt: skip


# --- 7, 8: combinations that crashed ------------------------------------------------


def test_a_one_model_lr_sweep_with_validation_reports_its_selection(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    grid(sweep, {("batchnorm", lr, s): (0.8 - lr, 0.8) for lr in (0.01, 0.1)
                 for s in (0, 1)})  # fmt: skip
    assert main([str(sweep)]) == 0
    report = report_of(sweep)
    assert "- batchnorm: optim.lr=0.01 (val_acc 0.7900)" in report
    assert (
        "No tuned gap: the runs have no model=baseline to compare with (models: "
        "batchnorm); choose the reference with --baseline NAME."
    ) in report


def test_a_baseline_that_diverged_at_every_lr_is_said(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    grid(sweep, {("batchnorm", lr, s): (0.8 - lr, 0.8) for lr in (0.01, 0.1)
                 for s in (0, 1)})  # fmt: skip
    for lr in (0.01, 0.1):
        make_job(sweep, ["model=baseline", f"optim.lr={lr}", "seed=0",
                         "data.val_size=100", "epochs=2"], [0.1], status="diverged",
                 val_accuracy=[0.1])  # fmt: skip
    assert main([str(sweep)]) == 0
    assert (
        "No tuned gap: model=baseline has no complete run to compare with (its 2 runs "
        "diverged; see Diverged runs)."
    ) in report_of(sweep)


@pytest.mark.parametrize("with_diagnostics", ["sgd", "adam"])
def test_runs_with_and_without_diagnostics_may_differ_in_optimizer(
    tmp_path, with_diagnostics
) -> None:
    sweep = tmp_path / "sweep"
    for optim in ("sgd", "adam"):
        extra = ["diagnostics=on"] if optim == with_diagnostics else []
        rows = diagnostic_rows([0, 10], ["1", "2"], 1.0) if extra else None
        for model in ("baseline", "batchnorm"):
            make_job(sweep, [f"model={model}", f"optim={optim}", "seed=0", *extra],
                [0.5, 0.6], diagnostics=rows)  # fmt: skip
    assert main([str(sweep)]) == 0
    table = pd.read_csv(sweep / "diagnostics_summary.csv")
    assert set(table["optim"]) == {with_diagnostics}


# --- 9: many varying keys cost what the runs cost ------------------------------------


MANY_KEYS = textwrap.dedent(
    """
    import resource, sys, time
    # 3 GiB: the product of the keys' values would never fit
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from pathlib import Path
    from fashionbn.aggregate import aggregate
    start = time.perf_counter()
    aggregate([Path(sys.argv[1])], select_by="none")
    print(f"{time.perf_counter() - start:.1f}")
    """
)


@pytest.mark.slow
def test_thirteen_varying_keys_aggregate_in_the_time_and_memory_of_their_runs(
    tmp_path,
) -> None:
    """16 settings, each with its own value of 13 keys, run by both models: pairs need
    each setting alone, while the product of the keys' values is 16^13 cells."""
    sweep = tmp_path / "sweep"
    for i in range(16):
        overrides = [
            f"optim.lr={0.001 * (i + 1)}", f"optim.momentum={i / 100}",
            f"optim.weight_decay={i / 1000}", f"batch_size={16 + i}",
            f"divergence_loss={50 + i}", f"model.hidden=[{8 + i},4]",
            f"model.init_std={0.01 + i / 100}", f"data.train_size={1000 + i}",
            f"data.test_size={500 + i}", f"data.val_size={100 + i}",
            f"data.split_seed={i}", f"model.norm_eps={1e-5 * (i + 1)}",
            f"model.activation={['relu', 'tanh', 'sigmoid'][i % 3]}",
            "model.init=normal", "model.norm=layernorm",
        ]  # fmt: skip
        for model, shift in (("baseline", 0.0), ("batchnorm", i / 100)):
            make_job_dir(sweep / f"{model}-{i}", [f"model={model}", *overrides,
                         "seed=0"], [0.3 + shift, 0.5 + shift])  # fmt: skip
    read = read_sweep([sweep])
    assert len(read.group_keys) - 1 >= 12  # model + 13 varying keys
    result = subprocess.run(
        [sys.executable, "-c", MANY_KEYS, str(sweep)], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) < 60
    comparisons = pd.read_csv(sweep / "comparisons.csv")
    at_2 = comparisons[comparisons["epoch"] == 2].sort_values("optim.lr")
    assert at_2["mean"].tolist() == pytest.approx([i / 100 for i in range(16)])
    assert (at_2["n"] == 1).all()


# --- 10: the aggregate touches only what it wrote ------------------------------------


def make_sweep(sweep: Path) -> Path:
    for model, base in (("baseline", 0.5), ("batchnorm", 0.8)):
        for seed in range(2):
            make_job(
                sweep,
                [f"model={model}", f"seed={seed}"],
                [base - 0.1, base + seed / 100],
            )
    return sweep


def test_a_users_file_with_an_outputs_name_is_never_replaced(tmp_path, capsys):
    sweep, out = make_sweep(tmp_path / "sweep"), tmp_path / "out"
    out.mkdir()
    (out / "comparisons.csv").write_text("my own table\n")
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: refusing to replace {out / 'comparisons.csv'}: fashionbn's " in err
    assert sorted(p.name for p in out.iterdir()) == ["comparisons.csv"]
    assert (out / "comparisons.csv").read_text() == "my own table\n"


def test_a_users_file_the_aggregate_does_not_produce_is_kept(tmp_path) -> None:
    sweep, out = make_sweep(tmp_path / "sweep"), tmp_path / "out"
    out.mkdir()
    (out / "tuning.png").write_text("my own figure\n")  # no selection: not produced
    (out / "selection.csv").write_text("my own selection\n")
    assert main([str(sweep), "--out", str(out)]) == 0
    assert (out / "tuning.png").read_text() == "my own figure\n"
    assert (out / "selection.csv").read_text() == "my own selection\n"


def test_the_aggregates_own_outputs_are_replaced_and_edited_ones_kept(tmp_path):
    sweep, out = make_sweep(tmp_path / "sweep"), tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert (out / "accuracy_gap.png").is_file()
    assert main([str(sweep), "--out", str(out)]) == 0  # its own files: replaced
    (out / "summary.md").write_text("my notes\n")  # edited since it was written
    assert main([str(sweep), "--out", str(out)]) == 2
    assert (out / "summary.md").read_text() == "my notes\n"
    only_bn = tmp_path / "bn"
    make_job(only_bn, ["model=batchnorm", "seed=0"], [0.7, 0.8])
    (out / "summary.md").unlink()
    assert (out / "comparisons.csv").is_file()
    (out / "accuracy_gap.png").write_bytes(b"my annotated figure")
    assert main([str(only_bn), "--out", str(out)]) == 0  # no gaps: neither produced
    assert not (out / "comparisons.csv").exists()  # its own stale output: removed
    assert (out / "accuracy_gap.png").read_bytes() == b"my annotated figure"  # kept


# --- 15: figures draw the numbers of the tables --------------------------------------


def capture_figures(monkeypatch) -> dict:
    """Keep each figure the aggregate renders, by the function that drew it."""
    drawn: dict = {}
    for name in ("accuracy_curves", "accuracy_gap", "tuning", "layer_inputs",
                 "gradients", "smoothness"):  # fmt: skip
        real = getattr(fashionbn.analysis.plot, name)

        def keep(*args, _real=real, _name=name, **kwargs):
            drawn[_name] = _real(*args, **kwargs)
            return drawn[_name]

        monkeypatch.setattr(fashionbn.analysis.plot, name, keep)
    monkeypatch.setattr(fashionbn.analysis.plot, "png", lambda fig: b"figure")
    return drawn


def lines_by_label(ax) -> dict:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines if not line.get_label().startswith("_")}  # fmt: skip


def band(ax, index: int) -> tuple[list, list]:
    """The lower and upper edge of the index-th fill_between band, at each x."""
    vertices = ax.collections[index].get_paths()[0].vertices
    xs = sorted(set(vertices[:, 0]))
    lower = [vertices[vertices[:, 0] == x, 1].min() for x in xs]
    upper = [vertices[vertices[:, 0] == x, 1].max() for x in xs]
    return lower, upper


def test_the_figures_draw_the_summary_and_the_gaps(tmp_path, monkeypatch) -> None:
    drawn = capture_figures(monkeypatch)
    sweep = tmp_path / "sweep"
    accuracy = {("baseline", 0): [0.2, 0.5], ("baseline", 1): [0.3, 0.6],
                ("baseline", 2): [0.1, 0.55], ("batchnorm", 0): [0.7, 0.8],
                ("batchnorm", 1): [0.72, 0.81],
                ("batchnorm", 2): [0.71, 0.79]}  # fmt: skip
    for (model, seed), values in accuracy.items():
        make_job(sweep, [f"model={model}", f"seed={seed}"], values)
    aggregate([sweep])
    (ax,) = [a for a in drawn["accuracy_curves"].axes if a.get_visible()]
    lines = lines_by_label(ax)
    for index, model in enumerate(("baseline", "batchnorm")):
        per_epoch = np.array([accuracy[(model, s)] for s in range(3)])  # (seed, epoch)
        mean, std = per_epoch.mean(axis=0), per_epoch.std(axis=0, ddof=1)
        assert lines[model][0] == [1, 2]
        assert lines[model][1] == pytest.approx(mean)
        lower, upper = band(ax, index)
        assert lower == pytest.approx(mean - std) and upper == pytest.approx(mean + std)
    summary = pd.read_csv(sweep / "summary.csv")  # and the same numbers as the table
    means = summary[summary["model"] == "batchnorm"]["test_acc_mean"].tolist()
    assert lines["batchnorm"][1] == pytest.approx(means)
    (ax,) = [a for a in drawn["accuracy_gap"].axes if a.get_visible()]
    gaps = np.array([np.subtract(accuracy[("batchnorm", s)], accuracy[("baseline", s)])
                     for s in range(3)])  # fmt: skip
    (line,) = lines_by_label(ax).values()
    assert line[1] == pytest.approx(gaps.mean(axis=0))
    lower, upper = band(ax, 0)
    half = T_975[2] * gaps.std(axis=0, ddof=1) / math.sqrt(3)
    assert lower == pytest.approx(gaps.mean(axis=0) - half)
    assert upper == pytest.approx(gaps.mean(axis=0) + half)


def test_the_tuning_figure_draws_the_validation_grid(tmp_path, monkeypatch) -> None:
    drawn = capture_figures(monkeypatch)
    sweep = tmp_path / "sweep"
    values = {("baseline", lr, s): (0.5 + lr / 10 + s / 100, 0.5)
              for lr in (0.1, 1.0) for s in (0, 1)}  # fmt: skip
    values |= {("batchnorm", lr, s): (0.9 - lr / 10 - s / 50, 0.8)
               for lr in (0.1, 1.0) for s in (0, 1)}  # fmt: skip
    grid(sweep, values)
    aggregate([sweep])
    (ax,) = [a for a in drawn["tuning"].axes if a.get_visible()]
    lines = lines_by_label(ax)
    assert lines["baseline"] == ([0.1, 1.0], pytest.approx([0.515, 0.605]))
    assert lines["batchnorm"] == ([0.1, 1.0], pytest.approx([0.88, 0.79]))
    assert ax.get_xscale() == "log"


# --- 19, 20: settings that do not apply; another reference ---------------------------


def test_a_baseline_pairs_with_every_bn_momentum_it_cannot_have(tmp_path) -> None:
    """bn_momentum cannot change the baseline: its two dirs are one run (counted once),
    and it is the partner of BatchNorm at each bn_momentum."""
    sweep = tmp_path / "sweep"
    for momentum in (0.01, 0.1):
        for seed in (0, 1):
            make_job(sweep, ["model=baseline", f"model.bn_momentum={momentum}",
                        f"seed={seed}"], [0.4, 0.5 + seed / 10])  # fmt: skip
            make_job(sweep, ["model=batchnorm", f"model.bn_momentum={momentum}",
                        f"seed={seed}"], [0.7, 0.6 + momentum + seed / 5])  # fmt: skip
    aggregate([sweep])
    report = report_of(sweep)
    assert "6 complete runs; 2 duplicates counted once" in report
    for momentum in (0.01, 0.1):
        gaps = [0.6 + momentum + s / 5 - (0.5 + s / 10) for s in (0, 1)]
        mean, low, high = t_line(gaps)
        assert (
            f"Gap batchnorm − baseline (model.bn_momentum={momentum}) at epoch 2: "
            f"{mean:+.4f} (95 % CI [{low:+.4f}, {high:+.4f}]"
        ) in report


def test_another_reference_model_can_be_chosen(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    for model, values in (("baseline", [0.5, 0.6]), ("layernorm", [0.7, 0.75]),
                          ("batchnorm", [0.8, 0.9])):  # fmt: skip
        for seed, value in enumerate(values):
            make_job(sweep, [f"model={model}", f"seed={seed}"], [value - 0.1, value])
    assert main([str(sweep), "--baseline", "layernorm"]) == 0
    report = report_of(sweep)
    mean, low, high = t_line([0.8 - 0.7, 0.9 - 0.75])
    assert (
        f"Gap batchnorm − layernorm at epoch 2: {mean:+.4f} (95 % CI [{low:+.4f}, "
        f"{high:+.4f}]"
    ) in report
    assert "Gap baseline − layernorm at epoch 2: -0.1750" in report
    assert "− baseline" not in report
    assert main([str(sweep), "--baseline", "groupnorm"]) == 2
    assert (
        "error: --baseline groupnorm: no complete run has model=groupnorm (models: "
        "baseline, batchnorm, layernorm)"
    ) in capsys.readouterr().err
