"""Each model at its own best hyperparameters, chosen on validation data only
(hand-made job dirs with known numbers)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionbn.aggregate import aggregate, main
from fashionbn.analysis.plot import log_scaled
from tests.conftest import hand_t_interval, make_job_dir

# (model, optim.lr) -> (val_acc per seed, test_acc per seed) at the last epoch. The
# test set would pick other learning rates than the validation set does.
GRID = {
    ("baseline", 0.01): ([0.50, 0.52, 0.54], [0.49, 0.51, 0.53]),
    ("baseline", 0.1): ([0.60, 0.62, 0.64], [0.70, 0.70, 0.70]),
    ("baseline", 1.0): ([0.70, 0.71, 0.72], [0.65, 0.66, 0.70]),
    ("batchnorm", 0.01): ([0.80, 0.80, 0.80], [0.79, 0.80, 0.81]),
    ("batchnorm", 0.1): ([0.85, 0.86, 0.87], [0.84, 0.85, 0.83]),
    ("batchnorm", 1.0): ([0.82, 0.83, 0.84], [0.90, 0.90, 0.90]),
}


def make_grid(sweep: Path, val: bool = True, extra: list[str] = ()) -> Path:
    for (model, lr), (vals, tests) in GRID.items():
        for seed, (v, t) in enumerate(zip(vals, tests)):
            overrides = [f"model={model}", f"optim.lr={lr}", f"seed={seed}", *extra]
            if val:
                overrides.append("data.val_size=100")
            make_job_dir(
                sweep / ",".join(overrides), overrides, [t - 0.1, t],
                val_accuracy=[v - 0.1, v] if val else None,
            )  # fmt: skip
    return sweep


def test_each_model_gets_its_best_setting_on_validation_data(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    aggregate([sweep])
    selection = pd.read_csv(sweep / "selection.csv")
    assert selection.columns.tolist() == [
        "model", "optim.lr", "n", "val_acc_mean", "test_acc_mean", "test_acc_std",
    ]  # fmt: skip
    baseline, batchnorm = selection.iloc[0], selection.iloc[1]
    assert (baseline["model"], baseline["optim.lr"], baseline["n"]) == (
        "baseline", 1.0, 3,
    )  # fmt: skip
    assert baseline["val_acc_mean"] == pytest.approx(0.71)
    assert baseline["test_acc_mean"] == pytest.approx(np.mean([0.65, 0.66, 0.70]))
    assert baseline["test_acc_std"] == pytest.approx(np.std([0.65, 0.66, 0.70], ddof=1))
    assert (batchnorm["optim.lr"], batchnorm["val_acc_mean"]) == (
        0.1,
        pytest.approx(0.86),
    )
    # the acceptance check: argmax of mean last-epoch val_acc per model (results.csv)
    results = pd.read_csv(sweep / "results.csv")
    last = results[results["epoch"] == results["epoch"].max()]
    means = last.groupby(["model", "optim.lr"])["val_acc"].mean().reset_index()
    best = means.loc[means.groupby("model")["val_acc"].idxmax()]
    assert best["optim.lr"].tolist() == selection["optim.lr"].tolist()


def test_the_tuned_comparison_in_the_report(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    aggregate([sweep])
    report = (sweep / "report.md").read_text()
    assert "## Tuned comparison (each model at its own best hyperparameters)" in report
    assert "- baseline: optim.lr=1.0 (val_acc 0.7100) → test accuracy 0.6700" in report
    assert "- batchnorm: optim.lr=0.1 (val_acc 0.8600) → test accuracy 0.8400" in report
    assert (
        "Warning: baseline's best optim.lr=1.0 is the largest tried: widen the grid"
        in (report)
    )
    assert "batchnorm's best" not in report  # 0.1 is inside its grid
    gaps = [0.84 - 0.65, 0.85 - 0.66, 0.83 - 0.70]
    mean, low, high = hand_t_interval(gaps)
    assert (
        f"Gap batchnorm − baseline (each at its best) at epoch 2: {mean:+.4f} (95 % CI "
        f"[{low:+.4f}, {high:+.4f}], paired t-interval over n=3 seeds"
    ) in report
    # 3 lrs x (epoch 1, epoch 2) plain comparisons + the tuned one: one Holm family
    assert "Holm: corrected for the 7 comparisons of this report" in report
    comparisons = pd.read_csv(sweep / "comparisons.csv")
    assert len(comparisons) == 7 and comparisons["p_holm"].notna().all()
    with Image.open(sweep / "tuning.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600


def test_no_selection_without_validation_metrics(tmp_path, capsys) -> None:
    sweep = make_grid(tmp_path / "sweep", val=False)
    aggregate([sweep])
    report = (sweep / "report.md").read_text()
    note = (
        "No tuned comparison: the sweep varies optim.lr, but 18 of 18 runs have no "
        "validation metrics (data.val_size=0), and fashionbn never selects on the test "
        "set"
    )
    assert note in report and note in capsys.readouterr().err
    assert not (sweep / "selection.csv").exists()
    assert not (sweep / "tuning.png").exists()


def test_select_by_none_turns_selection_off(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    aggregate([sweep])
    assert (sweep / "selection.csv").exists()
    assert main([str(sweep), "--select-by", "none"]) == 0
    assert "selection is off (--select-by none)" in (sweep / "report.md").read_text()
    assert not (sweep / "selection.csv").exists()  # an earlier one is removed


def test_select_by_val_loss_takes_the_lowest(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    aggregate([sweep], select_by="val_loss")
    selection = pd.read_csv(sweep / "selection.csv")
    assert "val_loss_mean" in selection.columns
    assert selection["optim.lr"].tolist() == [1.0, 0.1]  # val_loss = 1.5 - val_acc


def test_no_selection_across_different_validation_sets(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    overrides = ["model=baseline", "optim.lr=0.1", "seed=0", "data.val_size=200"]
    make_job_dir(sweep / "other", overrides, [0.5, 0.6], val_accuracy=[0.5, 0.99])
    aggregate([sweep])
    assert (
        "No tuned comparison: the runs differ in data.val_size; a selection needs one "
        "validation set for all of them."
    ) in (sweep / "report.md").read_text()


def test_a_setting_with_missing_seeds_is_flagged(tmp_path) -> None:
    sweep = make_grid(tmp_path / "sweep")
    victim = next(sweep.glob("model=batchnorm,optim.lr=0.1,seed=2,*"))
    (victim / "metrics.csv").unlink()  # as if it had failed
    aggregate([sweep])
    report = (sweep / "report.md").read_text()
    assert (
        "batchnorm's chosen setting has n=2 complete runs, other settings up to 3"
    ) in report


def test_learning_rates_get_a_log_axis() -> None:
    assert log_scaled("optim.lr", pd.Series([0.001, 0.003]))
    assert log_scaled("batch_size", pd.Series([16, 256]))
    assert not log_scaled("batch_size", pd.Series([32, 64]))
    assert not log_scaled("optim.momentum", pd.Series([0.0, 0.9]))
