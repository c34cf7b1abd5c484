"""Aggregation on hand-made job dirs with known numbers."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionbn.aggregate import aggregate, main, newest_sweep
from fashionbn.analysis.outputs import MANIFEST, OUTPUTS
from fashionbn.analysis.table import AggregateError, load_sweep, read_sweep
from fashionbn.jobs.files import METRIC_COLUMNS
from tests.conftest import hand_t_interval, make_job, report_of

# test accuracy per (model, seed) for epochs 1, 2
ACCURACY = {
    ("baseline", 0): [0.20, 0.50],
    ("baseline", 1): [0.30, 0.60],
    ("baseline", 2): [0.10, 0.55],
    ("batchnorm", 0): [0.70, 0.80],
    ("batchnorm", 1): [0.72, 0.81],
    ("batchnorm", 2): [0.71, 0.79],
}


def make_sweep(sweep: Path, extra: list[str] = ()) -> Path:
    for (model, seed), accuracy in ACCURACY.items():
        make_job(sweep, [f"model={model}", f"seed={seed}", *extra], accuracy)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_results_are_tidy_with_every_parameter(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep", extra=["data.root=/somewhere"])
    results = load_sweep(sweep)
    assert len(results) == 12  # 6 runs x 2 epochs
    columns = list(results.columns)
    assert columns[:2] == ["run", "model"]
    assert columns[-1 - len(METRIC_COLUMNS) :] == ["seed", *METRIC_COLUMNS]
    # parameters come from the resolved config: also those nobody overrode
    assert {"optim.lr", "optim", "model.norm", "epochs", "batch_size"} <= set(columns)
    assert not {"data.root", "device", "threads", "force"} & set(columns)
    row = results[(results["model"] == "batchnorm") & (results["seed"] == 1)]
    assert row["test_acc"].tolist() == [0.72, 0.81]
    assert set(row["optim.lr"]) == {0.001} and set(row["model.norm"]) == {"batchnorm"}
    assert results["seed"].dtype.kind == "i"
    assert read_sweep([sweep]).group_keys == ["model"]


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
    report = report_of(sweep)
    for epoch in (1, 2):
        gaps = [
            ACCURACY[("batchnorm", s)][epoch - 1] - ACCURACY[("baseline", s)][epoch - 1]
            for s in range(3)
        ]
        mean, low, high = hand_t_interval(gaps)
        assert (
            f"Gap batchnorm − baseline at epoch {epoch}: {mean:+.4f} (95 % CI "
            f"[{low:+.4f}, {high:+.4f}], paired t-interval over n=3"
        ) in report
    assert "Epochs to reach 70% test accuracy: model=baseline: not reached; " in report
    assert "model=batchnorm: epoch 1.0 on average (3/3 runs)" in report
    assert "Most stable across seeds at the last epoch (2): model=batchnorm" in report
    assert "![accuracy_gap.png](accuracy_gap.png)" in report


def test_pairing_is_by_seed_not_by_order(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, ["model=baseline", "seed=0"], [0.1, 0.1])
    make_job(sweep, ["model=baseline", "seed=1"], [0.5, 0.5])
    make_job(sweep, ["model=batchnorm", "seed=1"], [0.6, 0.6])
    make_job(sweep, ["model=batchnorm", "seed=0"], [0.2, 0.2])
    aggregate([sweep])
    # both pairs differ by exactly +0.1, so the interval has zero width
    assert "+0.1000 (95 % CI [+0.1000, +0.1000]" in report_of(sweep)


def test_extra_swept_key_groups_and_facets(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for lr in (0.01, 0.1):
        for (model, seed), accuracy in ACCURACY.items():
            shifted = [a + lr for a in accuracy]
            make_job(
                sweep, [f"model={model}", f"optim.lr={lr}", f"seed={seed}"], shifted
            )
    assert read_sweep([sweep]).group_keys == ["model", "optim.lr"]
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 8  # 2 models x 2 lrs x 2 epochs
    row = summary[(summary["model"] == "baseline") & (summary["optim.lr"] == 0.1)]
    assert row["test_acc_mean"].iloc[0] == pytest.approx(np.mean([0.2, 0.3, 0.1]) + 0.1)
    report = report_of(sweep)
    assert "Gap batchnorm − baseline (optim.lr=0.01) at epoch 1" in report
    assert "Gap batchnorm − baseline (optim.lr=0.1) at epoch 1" in report
    # faceted: one panel per lr makes the figure wider than tall
    width, height = Image.open(sweep / "test_accuracy.png").size
    assert width > 2 * height


def test_incomplete_and_broken_runs_are_excluded_and_listed(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    short = make_job(sweep, ["model=baseline", "seed=7", "epochs=2"], [0.9])
    missing = make_job(sweep, ["model=baseline", "seed=8"], [0.9, 0.9])
    (missing / "metrics.csv").unlink()
    wrong = make_job(sweep, ["model=baseline", "seed=9"], [0.9, 0.9])
    (wrong / "metrics.csv").write_text("epoch,accuracy\n1,0.9\n2,0.9\n")
    truncated = make_job(sweep, ["model=batchnorm", "seed=8"], [0.9, 0.9])
    lines = (truncated / "metrics.csv").read_text().splitlines(keepends=True)
    (truncated / "metrics.csv").write_text("".join(lines[:-1]))
    edited = make_job(sweep, ["model=batchnorm", "seed=9"], [0.9, 0.9])
    (edited / "metrics.csv").write_text(
        (edited / "metrics.csv").read_text().replace("0.9,0.5", "0.95,0.5")
    )
    broken = make_job(sweep, ["model=batchnorm", "seed=10"], [0.9, 0.9])
    (broken / "status.json").write_text('{"status": "complete", "epo')
    aggregate([sweep])
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["n"].tolist() == [3, 3, 3, 3]  # none of the 0.9s got in
    report = report_of(sweep)
    stderr = capsys.readouterr().err
    expected = {
        short: "status.json says complete after 1 epochs, but its config asks for 2",
        missing: "there is no metrics.csv; re-run the same command to restore it",
        wrong: "metrics.csv has columns ['epoch', 'accuracy']",
        truncated: "metrics.csv has 1 epochs but status.json says 2; re-run",
        edited: "metrics.csv was changed after the run wrote it",
        broken: "status.json is unreadable (JSONDecodeError",
    }
    for job, reason in expected.items():
        assert f"`{job}`: {reason}" in report
        assert f"skipped {job}: {reason}" in stderr
    assert "6 complete runs; 6 skipped (listed below)" in report


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    aggregate([sweep], out_dir=tmp_path / "out")
    for name in ("test_accuracy.png", "accuracy_gap.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 600 and height >= 400
    assert not (sweep / "report.md").exists()  # --out was honoured
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_several_sweep_dirs_are_combined(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make_job(first, ["model=baseline", "seed=0"], [0.1, 0.2])
    make_job(second, ["model=baseline", "seed=1"], [0.3, 0.4])
    results = load_sweep(first, second)
    assert sorted(results["seed"].unique()) == [0, 1]


# --- issue 8: never a silent wrong number ------------------------------------------


def test_the_same_run_in_two_sweeps_counts_once(tmp_path: Path, capsys) -> None:
    sweep = make_sweep(tmp_path / "a")
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    for dirs in ([sweep, copy], [sweep, sweep]):
        aggregate(dirs, out_dir=tmp_path / "out")
        summary = pd.read_csv(tmp_path / "out" / "summary.csv")
        assert summary["n"].tolist() == [3, 3, 3, 3]
        std = np.std([0.5, 0.6, 0.55], ddof=1)
        row = summary[(summary["model"] == "baseline") & (summary["epoch"] == 2)]
        assert row["test_acc_std"].iloc[0] == pytest.approx(std)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "given more than once; read once" in report
    aggregate([sweep, copy], out_dir=tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "6 complete runs; 6 duplicates counted once" in report
    job = "model=baseline,seed=0"
    assert f"- `{copy / job}`: same run as `{sweep / job}`" in report
    assert (
        f"duplicate {copy / job}: same run as {sweep / job}" in capsys.readouterr().err
    )


def test_the_same_run_with_different_numbers_is_refused(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "a")
    other = make_job(
        tmp_path / "b", ["model=batchnorm", "seed=1"], [0.72, 0.8101],
        execution=[{"device": "cpu", "torch_threads": 1, "torch": "test"}],
    )  # fmt: skip
    with pytest.raises(AggregateError) as info:
        read_sweep([sweep, tmp_path / "b"])
    message = str(info.value)
    assert str(sweep / "model=batchnorm,seed=1") in message and str(other) in message
    assert "test_acc at epoch 2: 0.81 vs 0.8101" in message
    assert "ran on cpu with 2 torch threads vs cpu with 1 torch thread" in message
    assert main([str(sweep), str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 2
    assert "hold the same run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_refusal_shows_every_digit_and_how_each_run_was_trained(tmp_path) -> None:
    """The issue's case read '2.30867 vs 2.30867; cpu with 1 torch thread vs cpu
    with 1 torch thread': neither the difference nor the launcher."""
    one = [{"device": "cpu", "torch_threads": 1, "torch": "t"}]
    first = make_job(
        tmp_path / "a",
        ["model=baseline", "seed=0"],
        [0.5, 0.6],
        execution=one,
        columns={"train_loss": [2.3, 2.308670043945]},
    )
    second = make_job(tmp_path / "b", ["model=baseline", "seed=0"], [0.5, 0.6],
                      execution=[{**one[0], "launcher": "batched", "cohort": 4,
                                  "slurm_job": "62_0"}],
                      columns={"train_loss": [2.3, 2.3086702823]})  # fmt: skip
    with pytest.raises(AggregateError) as info:
        read_sweep([tmp_path / "a", tmp_path / "b"])
    message = str(info.value)
    assert str(first) in message and str(second) in message
    assert "train_loss at epoch 2: 2.308670043945 vs 2.3086702823" in message
    assert (
        "ran on cpu with 1 torch thread vs cpu with 1 torch thread, batched launcher "
        "in a cohort of 4 (SLURM job 62_0)"
    ) in message


def test_parameters_come_from_the_config_not_the_command_line(tmp_path) -> None:
    default_lr, swept = tmp_path / "default", tmp_path / "swept"
    for seed in range(3):  # optim.lr left at its default, 0.001
        make_job(default_lr, ["model=baseline", f"seed={seed}"], [0.5, 0.6])
    for lr in ("0.001", "0.01"):
        for seed in range(3, 6):
            make_job(swept, ["model=baseline", f"optim.lr={lr}", f"seed={seed}"],
                     [0.5, 0.6 if lr == "0.001" else 0.7])  # fmt: skip
    sweep = read_sweep([default_lr, swept])
    assert sweep.group_keys == ["model", "optim.lr"]
    assert sorted(sweep.results["optim.lr"].unique()) == [0.001, 0.01]
    aggregate([default_lr, swept], out_dir=tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.groupby("optim.lr")["n"].max().to_dict() == {0.001: 6, 0.01: 3}
    assert not summary["optim.lr"].isna().any()


def test_model_options_are_described_not_grouped_separately(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    make_job(sweep, ["model=batchnorm_after", "seed=0"], [0.6, 0.7])
    read = read_sweep([sweep])
    assert read.group_keys == ["model"]  # norm / norm_placement follow the model
    aggregate([sweep])
    report = report_of(sweep)
    assert (
        "baseline = model.hidden=[64, 32], model.norm=none, model.activation=relu, "
        "model.init=default; "
    ) in report
    assert (
        "batchnorm_after = model.hidden=[64, 32], model.norm=batchnorm, "
        "model.norm_placement=after, model.activation=relu, model.init=default, "
        "model.bn_momentum=0.1, model.norm_eps=1e-05."
    ) in report


@pytest.mark.parametrize("value", ["70", "-1", "nan", "0", "1.5", "inf", "x"])
def test_a_threshold_outside_0_1_is_refused(tmp_path, capsys, value) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    with pytest.raises(SystemExit) as info:
        main([str(sweep), f"--threshold={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{value}: give a test accuracy as a fraction in (0, 1]" in err
    if value == "70":
        assert "for 70 % write 70%" in err
    assert not (sweep / "report.md").exists()


@pytest.mark.parametrize(
    "value, shown", [("70%", "70%"), ("0.75", "75%"), ("1", "100%")]
)
def test_a_threshold_as_fraction_or_percentage(tmp_path, value, shown) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    assert main([str(sweep), f"--threshold={value}"]) == 0
    assert f"Epochs to reach {shown} test accuracy" in report_of(sweep)


def test_groups_with_different_epochs_each_use_their_own_last_epoch(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for seed in range(2):
        # other seeds for 3 epochs: other runs (a run that is the start of a longer
        # one of the same seed counts once: tests/test_no_lost_runs.py)
        two, three = [f"seed={seed}", "epochs=2"], [f"seed={seed + 2}", "epochs=3"]
        make_job(sweep, ["model=baseline", *two], [0.3, 0.4 + seed / 10])
        make_job(sweep, ["model=batchnorm", *two], [0.7, 0.8 + seed / 10])
        make_job(sweep, ["model=baseline", *three], [0.3, 0.4, 0.5 + seed / 10])
        make_job(sweep, ["model=batchnorm", *three], [0.7, 0.8, 0.9 - seed / 10])
    aggregate([sweep])
    report = report_of(sweep)
    assert "Groups differ in: model, epochs" in report
    assert (
        "Test accuracy at each group's own last epoch: model=baseline, epochs=2 "
        "(epoch 2): 0.4500 ± 0.0707 (n=2); model=baseline, epochs=3 (epoch 3): "
        "0.5500 ± 0.0707 (n=2); model=batchnorm, epochs=2 (epoch 2): 0.8500 ± 0.0707"
        " (n=2); model=batchnorm, epochs=3 (epoch 3): 0.8500 ± 0.0707 (n=2)."
    ) in report
    assert "Gap batchnorm − baseline (epochs=2) at epoch 2: +0.4000" in report
    assert "Gap batchnorm − baseline (epochs=3) at epoch 3: +0.3000" in report
    # stability compares each group at its own last epoch, and says which
    assert re.search(r"Most stable .*\(std 0\.0707 at epoch [23]\); least", report)


def test_a_one_model_sweep_names_its_model(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    for seed in range(3):
        make_job(sweep, ["model=batchnorm", f"seed={seed}"], [0.7, 0.8])
    aggregate([sweep])
    report = report_of(sweep)
    assert "all runs" not in report
    assert "Model: batchnorm. Groups differ in: model;" in report
    assert "Test accuracy at epoch 1: model=batchnorm: 0.7000 ± 0.0000 (n=3)" in report
    assert "accuracy_gap.png skipped" in report
    assert "accuracy_gap.png skipped" in capsys.readouterr().err


def test_a_value_kept_only_by_survivors_is_named(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for seed in range(2):
            make_job(sweep, [f"model={model}", "optim.lr=0.001", f"seed={seed}"],
                     [0.5, 0.6])  # fmt: skip
            make_job(sweep, [f"model={model}", "optim.lr=100", f"seed={seed}",
                             "epochs=2"], [0.1], status="diverged")  # fmt: skip
    aggregate([sweep])
    report = report_of(sweep)
    assert "4 complete runs; 4 diverged (listed below)" in report
    assert "Every run used has optim.lr=0.001; the sweep also had optim.lr=100.0" in (
        report
    )


def test_stale_outputs_of_an_earlier_aggregate_are_removed(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    aggregate([sweep], out_dir=out)
    assert (out / "accuracy_gap.png").is_file()
    only_bn = tmp_path / "bn"
    make_job(only_bn, ["model=batchnorm", "seed=0"], [0.7, 0.8])
    aggregate([only_bn], out_dir=out)
    assert not (out / "accuracy_gap.png").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST, "profile.csv", "profile.png", "report.md", "results.csv",
        "summary.csv", "summary.md", "test_accuracy.png",
    ]  # fmt: skip
    assert set(OUTPUTS) > {p.name for p in out.iterdir()} - {MANIFEST}


def test_when_nothing_is_usable_the_error_says_why(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    job = make_job(sweep, ["model=baseline", "seed=0"], [0.5, 0.6])
    (job / "metrics.csv").write_text("")
    assert main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"1 unusable ({job}: metrics.csv has columns [], expected" in err


def test_older_format_runs_aggregate_with_a_note(tmp_path: Path) -> None:
    """A job dir of fashionbn before results formats: its status.json has no format,
    its config has device=auto, in_features, num_classes; it still groups with new
    runs of the same config."""
    sweep = make_sweep(tmp_path / "sweep")
    old = make_job(tmp_path / "old", ["model=baseline", "seed=5"], [0.4, 0.5])
    status = json.loads((old / "status.json").read_text())
    del status["format"], status["execution"], status["metrics_sha256"]
    status["config"]["device"] = "auto"
    status["config"]["threads"] = None
    status["config"]["model"] |= {"in_features": 784, "num_classes": 10}
    status["config"]["data"]["eval_batch_size"] = 10000
    (old / "status.json").write_text(json.dumps(status))
    read = read_sweep([sweep, tmp_path / "old"])
    assert read.group_keys == ["model"] and read.older == [str(old)]
    assert "model.in_features" not in read.results
    aggregate([sweep, tmp_path / "old"], out_dir=tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["n"].tolist() == [4, 4, 3, 3]
    assert (
        "1 run was written by an older fashionbn"
        in (tmp_path / "out" / "report.md").read_text()
    )


def test_a_full_or_read_only_out_dir_keeps_its_old_outputs(
    tmp_path, capsys, monkeypatch
) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    aggregate([sweep], out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    make_job(sweep, ["model=baseline", "seed=3"], [0.2, 0.3])
    import fashionbn.analysis.outputs

    real_create = fashionbn.analysis.outputs.create_new

    def full_disk_at_report(path: Path) -> int:
        if "report.md" in Path(path).name:
            raise OSError(28, "No space left on device", str(path))
        return real_create(path)

    monkeypatch.setattr(fashionbn.analysis.outputs, "create_new", full_disk_at_report)
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        f"error: cannot write {out / 'report.md'}: no space left on device; "
        f"nothing in {out} was changed"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_read_only_mount_as_out_is_one_line(tmp_path, capsys, read_only_dir) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--out", str(read_only_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot write {read_only_dir}")
    assert "read-only file system" in err


def test_a_full_tmpfs_as_out_is_one_line_and_unchanged(
    tmp_path, capsys, tiny_tmpfs
) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    (tiny_tmpfs / "report.md").write_text("# fashionbn report\nan earlier one\n")
    (tiny_tmpfs / "filler").write_bytes(os.urandom(280_000))  # leaves ~20 KB
    assert main([str(sweep), "--out", str(tiny_tmpfs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no space left on device; nothing in" in err
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler", "report.md"]
    assert (
        tiny_tmpfs / "report.md"
    ).read_text() == "# fashionbn report\nan earlier one\n"


# --- the command line --------------------------------------------------------------


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


def test_format_2_runs_without_validation_columns_still_aggregate(tmp_path) -> None:
    """metrics.csv of results format 2 has six columns (no val_loss, val_acc)."""
    sweep = make_sweep(tmp_path / "sweep")
    old = make_job(tmp_path / "old", ["model=baseline", "seed=5"], [0.4, 0.5])
    lines = (old / "metrics.csv").read_text().splitlines()
    six = "\n".join(",".join(line.split(",")[:6]) for line in lines) + "\n"
    (old / "metrics.csv").write_text(six)
    status = json.loads((old / "status.json").read_text())
    status["format"] = 2
    status["metrics_sha256"] = hashlib.sha256(six.encode()).hexdigest()
    (old / "status.json").write_text(json.dumps(status))
    read = read_sweep([sweep, tmp_path / "old"])
    assert read.older == [str(old)] and read.group_keys == ["model"]
    rows = read.results[read.results["run"] == str(old)]
    assert rows["test_acc"].tolist() == [0.4, 0.5] and rows["val_acc"].isna().all()


# --- diagnostics ---------------------------------------------------------------------


def diagnostic_rows(model: str, seed: int) -> list[dict]:
    """Two measurements (steps 0 and 10) of a 2-hidden-layer run with known values:
    the baseline's layer-2 median drifts by 1.0 + seed, BatchNorm's stays near 0; the
    baseline's landscape is 10x rougher."""
    drift = 1.0 + seed if model == "baseline" else 0.1
    rough = 10.0 if model == "baseline" else 1.0
    rows = []
    for step in (0, 10):
        moved = drift * (step / 10)
        values = {
            ("1", "act_in_p50"): 0.5, ("2", "act_in_p15"): -1.0 + moved,
            ("2", "act_in_p50"): moved, ("2", "act_in_p85"): 1.0 + moved,
            ("2", "act_in_std"): 1.0 + moved / 2, ("2", "grad_norm"): 0.1 * rough,
            ("2", "ics_l2"): 0.01 * rough, ("2", "ics_cos"): 0.9,
            ("all", "loss_range"): 0.02 * rough,
            ("all", "grad_change"): 0.3 * rough + seed,
            ("all", "beta_smoothness"): 5.0 * rough + seed,
        }  # fmt: skip
        rows += [
            {"step": step, "epoch": 0 if step == 0 else 1, "layer": layer,
             "quantity": quantity, "value": value}
            for (layer, quantity), value in values.items()
        ]  # fmt: skip
    return rows


def test_diagnostics_are_summarised_explained_and_drawn(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for model in ("baseline", "batchnorm"):
        for seed in (0, 1):
            make_job(sweep, [f"model={model}", f"seed={seed}", "diagnostics=on"],
                     [0.5, 0.6], diagnostics=diagnostic_rows(model, seed))  # fmt: skip
    aggregate([sweep])
    summary = pd.read_csv(sweep / "diagnostics_summary.csv", dtype={"layer": str})
    row = summary[
        (summary["model"] == "baseline")
        & (summary["step"] == 10)
        & (summary["layer"] == "2")
        & (summary["quantity"] == "act_in_p50")
    ]
    assert row[["n", "mean", "std"]].values.tolist() == [
        [2, pytest.approx(1.5), pytest.approx(np.std([1.0, 2.0], ddof=1))]
    ]  # fmt: skip
    report = report_of(sweep)
    assert "## Why: what the diagnostics measured" in report
    assert (
        "- model=baseline (n=2): from step 0 to step 10, the input to its last hidden "
        "layer's (2) activation (unit 0) moved its median from +0.000 to +1.500 and "
        "its 15th–85th percentile range from [-1.000, +1.000] to [+0.500, +2.500]; "
        "the layer's per-unit standard deviation, averaged over its units, went from "
        "1.000 to 1.750."
    ) in report
    # run means: baseline beta (50 + 50 + 51 + 51) / 4 = 50.5, batchnorm 5.5
    assert "model=baseline: effective β-smoothness 50.5, gradient change 3.5" in report
    assert "model=batchnorm: effective β-smoothness 5.5, gradient change 0.8" in report
    assert f"batchnorm / baseline: β-smoothness ×{5.5 / 50.5:.3g}" in report
    assert f"gradient change ×{0.8 / 3.5:.3g}" in report
    for name in ("layer_inputs.png", "gradients.png", "smoothness.png"):
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600
    # the runs with diagnostics group with the same runs without them
    results = load_sweep(sweep)
    assert not [c for c in results.columns if c.startswith("diagnostics")]


def test_the_same_run_with_and_without_diagnostics_counts_once(tmp_path) -> None:
    make_job(tmp_path / "a", ["model=baseline", "seed=0"], [0.5, 0.6])
    make_job(tmp_path / "b", ["model=baseline", "seed=0", "diagnostics=on"],
             [0.5, 0.6], diagnostics=diagnostic_rows("baseline", 0))  # fmt: skip
    read = read_sweep([tmp_path / "a", tmp_path / "b"])
    assert read.results["run"].nunique() == 1
    assert read.results["run"].iloc[0].startswith(str(tmp_path / "b"))  # kept: it has
    assert len(read.duplicates) == 1 and not read.diagnostics.empty  # diagnostics


def test_a_damaged_diagnostics_file_leaves_the_run_out(tmp_path) -> None:
    job = make_job(tmp_path / "s", ["model=baseline", "seed=0", "diagnostics=on"],
                   [0.5, 0.6], diagnostics=diagnostic_rows("baseline", 0))  # fmt: skip
    make_job(tmp_path / "s", ["model=baseline", "seed=1"], [0.5, 0.6])
    text = (job / "diagnostics.csv").read_text()
    (job / "diagnostics.csv").write_text(text.replace("0.9", "0.8"))
    read = read_sweep([tmp_path / "s"])
    why = (
        "diagnostics.csv was changed after the run wrote it (its digest does not match "
        "status.json); re-run the same command to restore it from checkpoint.pt"
    )
    assert read.skipped == [(str(job), why)]


def test_a_pipe_in_a_cell_cannot_split_a_markdown_table() -> None:
    from fashionbn.analysis.markdown import markdown_table

    frame = pd.DataFrame({"model": ["bn|after"], "n": [3]})
    assert markdown_table(frame) == "| model | n |\n|---|---|\n| bn\\|after | 3 |"


def test_a_key_that_does_not_apply_to_a_group_is_a_dash_in_the_summary() -> None:
    """model.bn_momentum of the baseline (null in its runs) is '—', not 'nan'."""
    from fashionbn.analysis.markdown import summary_markdown

    frame = pd.DataFrame({
        "model": ["baseline", "batchnorm"], "model.bn_momentum": [float("nan"), 0.01],
        "epoch": [1, 1], "n": [2, 2],
        "test_acc_mean": [0.5, 0.75], "test_acc_std": [0.125, 0.25],
    })  # fmt: skip
    for metric in ("test_loss", "train_acc", "train_loss", "val_acc", "val_loss"):
        frame[f"{metric}_mean"] = frame[f"{metric}_std"] = float("nan")
    frame["seconds_mean"] = frame["seconds_std"] = 1.0
    assert summary_markdown(frame, ["model", "model.bn_momentum"]) == (
        "| model | model.bn_momentum | epoch | test_acc |\n"
        "|---|---|---|---|\n"
        "| baseline | — | 1 | 0.5000 ± 0.1250 (n=2) |\n"
        "| batchnorm | 0.01 | 1 | 0.7500 ± 0.2500 (n=2) |"
    )
