"""Aggregation on hand-made sweep dirs with known numbers."""

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fashionbn.aggregate import aggregate, load_sweep, main, newest_sweep, read_sweep
from fashionbn.results import METRIC_COLUMNS

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (table)

# test accuracy per (model, seed) for epochs 1, 2
ACCURACY = {
    ("baseline", 0): [0.20, 0.50],
    ("baseline", 1): [0.30, 0.60],
    ("baseline", 2): [0.10, 0.55],
    ("batchnorm", 0): [0.70, 0.80],
    ("batchnorm", 1): [0.72, 0.81],
    ("batchnorm", 2): [0.71, 0.79],
}


def make_job(
    sweep: Path, overrides: list[str], accuracy: list[float], epochs: int = 2, **config
) -> Path:
    """A job dir as fashionbn.run leaves it, `accuracy` as its test_acc per epoch."""
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    model = next((o.split("=")[1] for o in overrides if o.startswith("model=")), "x")
    full_config = {"model": {"name": model}, "seed": 0, "epochs": epochs, **config}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(full_config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [
        {"epoch": e, "train_loss": 2.0 - a, "train_acc": a - 0.05, "test_loss": 1.5 - a,
         "test_acc": a, "seconds": 0.5}
        for e, a in enumerate(accuracy, start=1)
    ]  # fmt: skip
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(job / "metrics.csv", index=False)
    return job


def make_sweep(sweep: Path, extra: list[str] = ()) -> Path:
    for (model, seed), accuracy in ACCURACY.items():
        make_job(sweep, [f"model={model}", f"seed={seed}", *extra], accuracy)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_results_are_tidy_with_swept_parameters(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep", extra=["data.root=/somewhere", "epochs=2"])
    results = load_sweep(sweep)
    assert len(results) == 12  # 6 runs x 2 epochs
    assert list(results.columns) == ["run", "model", "epochs", "seed", *METRIC_COLUMNS]
    row = results[(results["model"] == "batchnorm") & (results["seed"] == 1)]
    assert row["test_acc"].tolist() == [0.72, 0.81]
    assert results["seed"].dtype.kind == "i"  # parsed, not strings


def test_summary_means_stds_and_n(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4  # 2 models x 2 epochs
    for (model, epoch), row in summary.set_index(["model", "epoch"]).iterrows():
        values = [ACCURACY[(model, seed)][epoch - 1] for seed in range(3)]
        assert row["n"] == 3
        assert row["test_acc_mean"] == pytest.approx(np.mean(values))
        assert row["test_acc_std"] == pytest.approx(np.std(values, ddof=1))
    markdown = (sweep / "summary.md").read_text()
    mean, std = np.mean([0.70, 0.72, 0.71]), np.std([0.70, 0.72, 0.71], ddof=1)
    assert f"{mean:.4f} ± {std:.4f} (n=3)" in markdown


def test_gap_confidence_interval_is_a_paired_t_interval(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    aggregate([sweep])
    report = (sweep / "report.md").read_text()
    for epoch in (1, 2):
        gaps = [
            ACCURACY[("batchnorm", s)][epoch - 1] - ACCURACY[("baseline", s)][epoch - 1]
            for s in range(3)
        ]
        half = T_975_DF2 * np.std(gaps, ddof=1) / math.sqrt(3)
        mean = np.mean(gaps)
        assert (
            f"Gap batchnorm − baseline at epoch {epoch}: {mean:+.4f} (95 % CI "
            f"[{mean - half:+.4f}, {mean + half:+.4f}], paired t-interval over n=3"
        ) in report
    assert "Epochs to reach 70% test accuracy: model=baseline: not reached; " in report
    assert "model=batchnorm: epoch 1.0 on average (3/3 runs)" in report
    assert "Most stable across seeds at epoch 2: model=batchnorm" in report
    assert "![accuracy_gap.png](accuracy_gap.png)" in report


def test_pairing_is_by_seed_not_by_order(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, ["model=baseline", "seed=0"], [0.1, 0.1])
    make_job(sweep, ["model=baseline", "seed=1"], [0.5, 0.5])
    make_job(sweep, ["model=batchnorm", "seed=1"], [0.6, 0.6])
    make_job(sweep, ["model=batchnorm", "seed=0"], [0.2, 0.2])
    aggregate([sweep])
    # both pairs differ by exactly +0.1, so the interval has zero width
    assert "+0.1000 (95 % CI [+0.1000, +0.1000]" in (sweep / "report.md").read_text()


def test_extra_swept_key_groups_and_facets(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for lr in (0.01, 0.1):
        for (model, seed), accuracy in ACCURACY.items():
            shifted = [a + lr for a in accuracy]
            make_job(
                sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}"], shifted
            )
    sweep_data = read_sweep([sweep])
    assert sweep_data.group_keys == ["model", "optim.lr"]
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 8  # 2 models x 2 lrs x 2 epochs
    row = summary[(summary["model"] == "baseline") & (summary["optim.lr"] == 0.1)]
    assert row["test_acc_mean"].iloc[0] == pytest.approx(np.mean([0.2, 0.3, 0.1]) + 0.1)
    report = (sweep / "report.md").read_text()
    assert "Gap batchnorm − baseline (optim.lr=0.01) at epoch 1" in report
    assert "Gap batchnorm − baseline (optim.lr=0.1) at epoch 1" in report
    # faceted: one panel per lr makes the figure wider than tall
    width, height = Image.open(sweep / "test_accuracy.png").size
    assert width > 2 * height


def test_incomplete_and_broken_runs_are_excluded_and_listed(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    short = make_job(sweep, ["model=baseline", "seed=7"], [0.9])  # 1 of 2 epochs
    missing = make_job(sweep, ["model=baseline", "seed=8"], [0.9, 0.9])
    (missing / "metrics.csv").unlink()
    wrong = make_job(sweep, ["model=baseline", "seed=9"], [0.9, 0.9])
    (wrong / "metrics.csv").write_text("epoch,accuracy\n1,0.9\n2,0.9\n")
    broken = make_job(sweep, ["model=batchnorm", "seed=9"], [0.9, 0.9])
    (broken / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["n"].tolist() == [3, 3, 3, 3]  # none of the 0.9s got in
    report = (sweep / "report.md").read_text()
    stderr = capsys.readouterr().err
    expected = {
        short: "incomplete: 1 of 2 epochs",
        missing: "no metrics.csv",
        wrong: "metrics.csv has columns ['epoch', 'accuracy']",
        broken: "unreadable .hydra files",
    }
    for job, reason in expected.items():
        assert f"`{job}`: {reason}" in report
        assert f"skipped {job}: {reason}" in stderr
    assert "6 complete runs; 4 skipped" in report


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    aggregate([sweep], out_dir=tmp_path / "out")
    for name in ("test_accuracy.png", "accuracy_gap.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 600 and height >= 400
    assert not (sweep / "report.md").exists()  # --out was honoured


def test_gap_plot_is_skipped_without_a_baseline(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    for seed in range(3):
        make_job(sweep, ["model=batchnorm", f"seed={seed}"], [0.7, 0.8])
    aggregate([sweep])
    assert not (sweep / "accuracy_gap.png").exists()
    assert "accuracy_gap.png skipped" in capsys.readouterr().err
    assert "accuracy_gap.png skipped" in (sweep / "report.md").read_text()


def test_several_sweep_dirs_are_combined(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make_job(first, ["model=baseline", "seed=0"], [0.1, 0.2])
    make_job(second, ["model=baseline", "seed=1"], [0.3, 0.4])
    results = load_sweep(first, second)
    assert sorted(results["seed"].unique()) == [0, 1]


def test_newest_sweep_is_the_last_written(tmp_path: Path) -> None:
    old = make_sweep(tmp_path / "multirun" / "2026-01-01" / "10-00-00")
    new = make_sweep(tmp_path / "multirun" / "2025-12-31" / "09-00-00")
    os.utime(old / "multirun.yaml", (1_000, 1_000))
    assert newest_sweep(tmp_path / "multirun") == new


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/does-not-exist"], "no such directory"),
        (["{tmp}/empty"], "no complete runs found"),
    ],
)
def test_cli_errors_are_one_line_and_non_zero(tmp_path, capsys, args, message) -> None:
    (tmp_path / "empty").mkdir()
    code = main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_without_sweeps_explains_what_to_do(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "no sweep found under multirun/" in capsys.readouterr().err


def test_cli_help_explains_the_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "SWEEP_DIR" in out and "--out" in out and "newest sweep" in out
