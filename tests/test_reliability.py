"""Resumable sweeps, crash-safe files, divergence, and clear errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import fashionbn.train
from fashionbn.aggregate import read_sweep
from fashionbn.config import FashionbnError
from fashionbn.data import raw_dir
from fashionbn.results import atomic_write, read_metrics, read_status, write_status
from fashionbn.train import train_and_evaluate
from tests.conftest import compose_config, run_module, without_seconds

# --- resume, skip, refuse (in-process, real data) -------------------------------


@pytest.fixture
def cfg3(small_real_overrides):
    """BatchNorm (running stats and all RNGs matter), 3 epochs on a real subset."""
    return compose_config([*small_real_overrides, "model=batchnorm", "epochs=3"])


@pytest.mark.slow
def test_interrupted_run_resumes_with_identical_numbers(cfg3, tmp_path, monkeypatch):
    uninterrupted = train_and_evaluate(cfg3, tmp_path / "whole")

    real_evaluate, calls = fashionbn.train.evaluate, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fashionbn.train, "evaluate", evaluate_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_and_evaluate(cfg3, tmp_path / "split")
    status = read_status(tmp_path / "split")
    assert status["status"] == "failed" and status["epochs_done"] == 1
    assert "simulated crash" in status["error"]
    assert len(read_metrics(tmp_path / "split")) == 1

    monkeypatch.setattr(fashionbn.train, "evaluate", real_evaluate)
    resumed = train_and_evaluate(cfg3, tmp_path / "split")
    assert without_seconds(resumed) == without_seconds(uninterrupted)
    assert without_seconds(read_metrics(tmp_path / "split")) == without_seconds(
        read_metrics(tmp_path / "whole")
    )
    assert read_status(tmp_path / "split")["status"] == "complete"


@pytest.mark.slow
def test_kill_between_checkpoint_and_metrics_loses_nothing(cfg3, tmp_path, monkeypatch):
    """The last epoch's checkpoint was written, then the kill came: metrics.csv and
    status.json still say 2 epochs. The re-run completes them without training."""
    full = train_and_evaluate(cfg3, tmp_path)
    metrics = (tmp_path / "metrics.csv").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.csv").write_text("".join(metrics[:-1]))
    write_status(tmp_path, "running", read_status(tmp_path)["config"], 2)

    def must_not_train(*args, **kwargs):
        raise AssertionError("the checkpointed epoch was trained again")

    monkeypatch.setattr(fashionbn.train, "train_one_epoch", must_not_train)
    assert train_and_evaluate(cfg3, tmp_path) == full
    assert read_metrics(tmp_path) == full
    assert read_status(tmp_path)["status"] == "complete"


@pytest.mark.slow
def test_complete_run_is_skipped_not_retrained(cfg3, tmp_path, monkeypatch) -> None:
    first = train_and_evaluate(cfg3, tmp_path)
    before = (tmp_path / "metrics.csv").stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(fashionbn.train, "train_one_epoch", must_not_train)
    again = train_and_evaluate(cfg3, tmp_path)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in first]
    assert (tmp_path / "metrics.csv").stat().st_mtime_ns == before


@pytest.mark.slow
def test_changed_config_is_refused_and_nothing_is_mixed(cfg3, tmp_path) -> None:
    train_and_evaluate(cfg3, tmp_path)
    original = (tmp_path / "metrics.csv").read_text()
    cfg3.optim.lr = 0.01
    with pytest.raises(FashionbnError, match=r"optim.lr: 0.001 -> 0.01.*force=true"):
        train_and_evaluate(cfg3, tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == original  # nothing mixed in
    # where the data lives is not part of what a run computes: still "the same run"
    cfg3.optim.lr = 0.001
    cfg3.data.root = str(tmp_path / "elsewhere")  # not read: the run is complete
    assert len(train_and_evaluate(cfg3, tmp_path)) == 3


@pytest.mark.slow
def test_force_discards_the_old_run(cfg3, small_real_overrides, tmp_path) -> None:
    train_and_evaluate(cfg3, tmp_path)
    changed = compose_config(
        [*small_real_overrides, "model=batchnorm", "epochs=2", "force=true"]
    )
    records = train_and_evaluate(changed, tmp_path)
    assert len(records) == 2 and len(read_metrics(tmp_path)) == 2
    assert read_status(tmp_path)["config"]["epochs"] == 2


@pytest.mark.slow
def test_divergence_ends_the_run_with_its_own_status(small_real_overrides, tmp_path):
    cfg = compose_config([*small_real_overrides, "optim.lr=100", "epochs=3"])
    records = train_and_evaluate(cfg, tmp_path)
    assert len(records) == 1  # stopped after the epoch that blew up
    assert records[0]["train_loss"] > cfg.divergence_loss
    status = read_status(tmp_path)
    assert status["status"] == "diverged" and status["epochs_done"] == 1
    # a diverged run is finished: re-running the sweep does not repeat it
    assert len(train_and_evaluate(cfg, tmp_path)) == 1


# --- crash-safe writes -----------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("old, complete content\n")

    def write_half_then_die(f) -> None:
        f.write("half of the new")
        raise KeyboardInterrupt  # what a kill looks like from inside

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_half_then_die)
    assert target.read_text() == "old, complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


# --- bad input: one clear error before any training ------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epochs=0"], "epochs=0: must be >= 1"),
        (["batch_size=0"], "batch_size=0: must be >= 1"),
        (["optim.lr=0"], "optim.lr=0.0: the learning rate must be > 0"),
        (["optim.lr=-0.1"], "optim.lr=-0.1: the learning rate must be > 0"),
        (["model.hidden=[]"], r"model.hidden=\[\]: give one or more positive"),
        (["model.hidden=[64,0]"], r"model.hidden=\[64, 0\]: give one or more"),
        (
            ["data.train_size=60001"],
            "data.train_size=60001 but the train set has 60000",
        ),
        (["data.test_size=0"], "data.test_size=0 but the test set has 10000"),
        (["device=gpu0"], "device=gpu0: use auto, cpu, cuda or cuda:N"),
        (["threads=0"], "threads=0: must be >= 1 or null"),
    ],
)
def test_bad_values_fail_before_training(
    overrides, message, real_data_root, tmp_path, monkeypatch
) -> None:
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(fashionbn.train, "train_one_epoch", must_not_train)
    cfg = compose_config([f"data.root={real_data_root}", *overrides])
    with pytest.raises(FashionbnError, match=message):
        train_and_evaluate(cfg, tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_before_training(tmp_path) -> None:
    with pytest.raises(FashionbnError, match="device=cuda but CUDA is not available"):
        train_and_evaluate(compose_config(["device=cuda"]), tmp_path)


def cli_error(args: list[str], cwd: Path) -> str:
    """Run fashionbn.run expecting a clean failure; return its one error line."""
    result = run_module(["fashionbn.run", *args], cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_code_2(real_data_root, tmp_path) -> None:
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    assert "epochs=0: must be >= 1" in cli_error(["epochs=0", run_dir], tmp_path)
    line = cli_error(["data.train_size=100000", f"data.root={real_data_root}", run_dir],
                     tmp_path)  # fmt: skip
    assert "data.train_size=100000 but the train set has 60000" in line


@pytest.mark.slow
def test_cli_corrupt_dataset_file_is_named(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    victim = system_dir / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:30])
    line = cli_error(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )  # fmt: skip
    assert f"{victim}: cannot decompress" in line


@pytest.mark.slow
def test_unknown_group_option_lists_the_choices(tmp_path) -> None:
    result = run_module(["fashionbn.run", "model=foo"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/foo'" in result.stderr
    assert "baseline" in result.stderr and "batchnorm" in result.stderr


# --- whole sweeps: kill, resume, failing jobs (real subprocesses) ----------------

SWEEP = ["model=baseline,batchnorm", "seed=0,1", "epochs=3", "data.train_size=20000",
         "data.test_size=2000"]  # fmt: skip


def sweep_results(sweep_dir: Path) -> pd.DataFrame:
    """Aggregated results minus what legitimately differs (dir paths, timings)."""
    results = read_sweep([sweep_dir]).results.drop(columns=["run", "seconds"])
    return results.sort_values(["model", "seed", "epoch"]).reset_index(drop=True)


def statuses(sweep_dir: Path) -> list[dict]:
    return [s for s in map(read_status, sweep_dir.glob("*/")) if s is not None]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results(real_data_root, tmp_path) -> None:
    common = [*SWEEP, f"data.root={real_data_root}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_module(["fashionbn.run", "-m", *common, f"hydra.sweep.dir={whole}"],
                      tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr

    command = [sys.executable, "-m", "fashionbn.run", "-m", *common,
               f"hydra.sweep.dir={killed}"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once job 1 is done and job 2 is midway
        now = statuses(killed)
        if any(s["status"] == "complete" for s in now) and any(
            s["status"] == "running" and s["epochs_done"] >= 1 for s in now
        ):
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = statuses(killed)
    assert sum(s["status"] == "complete" for s in at_kill) < 4, "killed too late"
    assert any(s["status"] == "running" for s in at_kill)

    resumed = run_module(["fashionbn.run", "-m", *common, f"hydra.sweep.dir={killed}"],
                         tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "is complete already; skipping it" in resumed.stderr
    assert "resuming" in resumed.stderr and "after epoch" in resumed.stderr
    pd.testing.assert_frame_equal(sweep_results(killed), sweep_results(whole))
    # every metrics.csv is identical to the uninterrupted one, except the timings
    for metrics in whole.glob("*/metrics.csv"):
        twin = killed / metrics.parent.name / "metrics.csv"
        assert without_seconds(read_metrics(twin.parent)) == without_seconds(
            read_metrics(metrics.parent)
        )


@pytest.mark.slow
def test_a_crashing_job_leaves_the_others_intact(real_data_root, tmp_path) -> None:
    """An unexpected exception (here: inputs of the wrong width) fails that job only;
    the basic launcher still runs the rest, then the sweep exits non-zero."""
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "model.in_features=10,784", "optim.lr=100,0.001",
         "epochs=2", "data.train_size=2048", "data.test_size=500",
         f"data.root={real_data_root}", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    by_dir = {p.name: read_status(p) for p in sweep_dir.glob("*/")}
    assert len(by_dir) == 4
    failed = [d for d, s in by_dir.items() if s["status"] == "failed"]
    assert sorted(failed) == sorted(d for d in by_dir if "model.in_features=10," in d)
    sweep = read_sweep([sweep_dir])
    assert sweep.results["run"].nunique() == 1  # in_features=784, lr=0.001
    assert [Path(run).name for run, _ in sweep.diverged] == [
        "data.test_size=500,data.train_size=2048,epochs=2,model.in_features=784,"
        "optim.lr=100"
    ]
    assert all("failed after 0 of 2 epochs" in why for _, why in sweep.skipped)
    assert len(sweep.skipped) == 2
    report = run_module(["fashionbn.aggregate", str(sweep_dir)], tmp_path)
    assert report.returncode == 0, report.stderr
    text = (sweep_dir / "report.md").read_text()
    assert "## Diverged runs" in text and "## Skipped runs" in text


def test_status_file_is_valid_json_with_the_config(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    cfg = compose_config(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}", "epochs=2"]
    )
    train_and_evaluate(cfg, tmp_path / "job")
    status = json.loads((tmp_path / "job" / "status.json").read_text())
    assert status["status"] == "complete" and status["epochs_done"] == 2
    assert status["config"]["optim"]["lr"] == 0.001
    assert (
        "root" not in status["config"]["data"]
    )  # paths are not part of a run's identity
    assert raw_dir(tmp_path / "root").is_dir()
