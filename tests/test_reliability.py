"""Resumable sweeps, crash-safe files, divergence, concurrency, signals, and clear
errors for bad input (in-process and as real subprocesses)."""

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

import fashionbn.core.evaluation
import fashionbn.core.train
from fashionbn.analysis.table import read_sweep
from fashionbn.config import FashionbnError
from fashionbn.core.data import raw_dir
from fashionbn.jobs.files import RESULTS_FORMAT, atomic_write, read_metrics, read_status
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config, run_module, without_seconds

# --- resume, skip, refuse (in-process, real data) -------------------------------


@pytest.fixture
def cfg3(small_real_overrides):
    """BatchNorm (running stats and all RNGs matter), 3 epochs on a real subset."""
    return compose_config([*small_real_overrides, "model=batchnorm", "epochs=3"])


@pytest.mark.slow
def test_interrupted_run_resumes_with_identical_numbers(cfg3, tmp_path, monkeypatch):
    uninterrupted = run_job(cfg3, tmp_path / "whole")

    real_evaluate, calls = fashionbn.core.evaluation.evaluate, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fashionbn.core.evaluation, "evaluate", evaluate_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(cfg3, tmp_path / "split")
    status = read_status(tmp_path / "split")[0]
    assert status["status"] == "failed" and status["epochs_done"] == 1
    assert "simulated crash" in status["error"]
    assert len(read_metrics(tmp_path / "split")) == 1

    monkeypatch.setattr(fashionbn.core.evaluation, "evaluate", real_evaluate)
    resumed = run_job(cfg3, tmp_path / "split")
    assert without_seconds(resumed) == without_seconds(uninterrupted)
    assert without_seconds(read_metrics(tmp_path / "split")) == without_seconds(
        read_metrics(tmp_path / "whole")
    )
    assert read_status(tmp_path / "split")[0]["status"] == "complete"


@pytest.mark.slow
def test_complete_run_is_skipped_not_retrained(cfg3, tmp_path, monkeypatch) -> None:
    first = run_job(cfg3, tmp_path)
    before = (tmp_path / "metrics.csv").stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", must_not_train)
    again = run_job(cfg3, tmp_path)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in first]
    assert (tmp_path / "metrics.csv").stat().st_mtime_ns == before


@pytest.mark.slow
def test_changed_config_is_refused_and_nothing_is_mixed(cfg3, tmp_path) -> None:
    run_job(cfg3, tmp_path)
    original = (tmp_path / "metrics.csv").read_text()
    cfg3.optim.lr = 0.01
    with pytest.raises(FashionbnError, match=r"optim.lr: 0.001 -> 0.01.*force=true"):
        run_job(cfg3, tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == original  # nothing mixed in
    # where the data lives is not part of what a run computes: still "the same run"
    cfg3.optim.lr = 0.001
    cfg3.data.root = str(tmp_path / "elsewhere")  # not read: the run is complete
    assert len(run_job(cfg3, tmp_path)) == 3


@pytest.mark.slow
def test_force_discards_the_old_run(cfg3, small_real_overrides, tmp_path) -> None:
    run_job(cfg3, tmp_path)
    changed = compose_config(
        [*small_real_overrides, "model=batchnorm", "epochs=2", "force=true"]
    )
    records = run_job(changed, tmp_path)
    assert len(records) == 2 and len(read_metrics(tmp_path)) == 2
    assert read_status(tmp_path)[0]["config"]["epochs"] == 2


@pytest.mark.slow
def test_divergence_ends_the_run_with_its_own_status(small_real_overrides, tmp_path):
    cfg = compose_config([*small_real_overrides, "optim.lr=100", "epochs=3"])
    records = run_job(cfg, tmp_path)
    assert len(records) == 1  # stopped after the epoch that blew up
    assert records[0]["train_loss"] > cfg.divergence_loss
    status = read_status(tmp_path)[0]
    assert status["status"] == "diverged" and status["epochs_done"] == 1
    # a diverged run is finished: re-running the sweep does not repeat it
    assert len(run_job(cfg, tmp_path)) == 1


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
        (["optim.lr=0"], "optim.lr=0.0: the learning rate must be a finite number"),
        (["optim.lr=-0.1"], "optim.lr=-0.1: the learning rate must be a finite"),
        (["optim.lr=nan"], "optim.lr=nan: the learning rate must be a finite"),
        (["optim.lr=inf"], "optim.lr=inf: the learning rate must be a finite"),
        (["model.hidden=[]"], r"model.hidden=\[\]: give one or more positive"),
        (["model.hidden=[64,0]"], r"model.hidden=\[64, 0\]: give one or more"),
        (
            ["data.train_size=60001"],
            "data.train_size=60001 but the train set has 60000",
        ),
        (["data.test_size=0"], "data.test_size=0: must be >= 1, or null"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0: must be >= 1"),
        (["device=gpu0"], "device=gpu0: use auto, cpu, cuda or cuda:N"),
        (["device=mps"], "device=mps: use auto, cpu, cuda or cuda:N"),
        (["threads=0"], r"threads=0: must be in 1..\d+ \(this machine's cores\)"),
        (["threads=1000"], r"threads=1000: must be in 1..\d+ .* only slows"),
        (["seed=-1"], r"seed=-1: must be in 0..4294967295"),
        (["seed=4294967296"], r"seed=4294967296: must be in 0..4294967295"),
        (["model=batchnorm", "model.norm_eps=0"], "model.norm_eps=0.0: must be > 0"),
        (["model=layernorm", "model.norm_eps=-1"], "model.norm_eps=-1.0: must be >"),
        (["model.init=normal", "model.init_std=0"], "model.init_std=0.0: must be a"),
        (["data.name=mnist"], "data.name=mnist with data.system_dir=/usr/share/"),
        (
            ["diagnostics=on", "diagnostics.every_steps=0"],
            "diagnostics.every_steps=0: must be >= 1, or null",
        ),
        (
            ["diagnostics=on", "diagnostics.probe_size=1"],
            "diagnostics.probe_size=1: must be >= 2",
        ),
        (
            ["diagnostics=on", "diagnostics.step_sizes=[]"],
            r"diagnostics.step_sizes=\[\]: give one or more multiples",
        ),
        (
            ["diagnostics=on", "diagnostics.step_sizes=[1,-2]"],
            r"diagnostics.step_sizes=\[1.0, -2.0\]: give one or more",
        ),
        (
            ["model=batchnorm", "model.bn_momentum=2"],
            r"model.bn_momentum=2.0: must be in \[0, 1\]",
        ),
        (["optim.momentum=-1"], r"optim.momentum=-1.0: must be in \[0, 1\)"),
        (["optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1.0: must be a finite"),
        (["optim=adam", "optim.betas=[2,0]"], r"optim.betas=\[2.0, 0.0\]: give two"),
        (["optim=adam", "optim.betas=[0.9]"], r"optim.betas=\[0.9\]: give two"),
        (["optim=adam", "optim.eps=0"], "optim.eps=0.0: must be a finite number > 0"),
        (["divergence_loss=nan"], "divergence_loss=nan: must be > 0"),
    ],
)
def test_bad_values_fail_before_training(
    overrides, message, real_data_root, tmp_path, monkeypatch
) -> None:
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", must_not_train)
    cfg = compose_config([f"data.root={real_data_root}", *overrides])
    with pytest.raises(FashionbnError, match=message):
        run_job(cfg, tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_before_training(tmp_path) -> None:
    with pytest.raises(FashionbnError, match="device=cuda but CUDA is not available"):
        run_job(compose_config(["device=cuda"]), tmp_path)


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
    line = cli_error(["experiment=lr_sweep", run_dir], tmp_path)
    assert (
        "experiment=lr_sweep is a sweep preset (model, optim.lr, seed): run it with "
        "-m, e.g. python -m fashionbn.run -m experiment=lr_sweep"
    ) in line
    assert not (tmp_path / "run" / "status.json").exists()


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
def test_unknown_options_and_dataset_facts_are_refused_by_hydra(tmp_path) -> None:
    result = run_module(["fashionbn.run", "model=foo"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'model/foo'" in result.stderr
    assert "baseline" in result.stderr and "batchnorm" in result.stderr
    options = result.stderr.split("Available options in 'model':")[1]
    options = options.split("Config search path")[0].split()
    assert options == ["baseline", "batchnorm", "batchnorm_after", "groupnorm",
                       "layernorm", "rmsnorm"]  # fmt: skip
    for key in ("model.in_features=100", "model.num_classes=5"):
        result = run_module(["fashionbn.run", key], cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"Key '{key.split('.')[1].split('=')[0]}' not in 'ModelConfig'" in (
            result.stderr
        )


# --- whole sweeps: kill, resume, failing jobs (real subprocesses) ----------------

SWEEP = ["model=baseline,batchnorm", "seed=0,1", "epochs=3", "data.train_size=20000",
         "data.test_size=2000"]  # fmt: skip


def sweep_results(sweep_dir: Path) -> pd.DataFrame:
    """Aggregated results minus what legitimately differs (dir paths, timings)."""
    results = read_sweep([sweep_dir]).results.drop(columns=["run", "seconds"])
    return results.sort_values(["model", "seed", "epoch"]).reset_index(drop=True)


def statuses(sweep_dir: Path) -> list[dict]:
    found = [read_status(job)[0] for job in sweep_dir.glob("*/")]
    return [s for s in found if s is not None]


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


CRASH_HIDDEN_7 = """
import runpy, sys
import fashionbn.core.train
real = fashionbn.core.train.build_model
def build_model(model_cfg, *args, **kwargs):
    if list(model_cfg.hidden) == [7]:
        raise RuntimeError("simulated bug")
    return real(model_cfg, *args, **kwargs)
fashionbn.core.train.build_model = build_model
sys.argv[0] = "fashionbn.run"
runpy.run_module("fashionbn.run", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_crashing_job_leaves_the_others_intact(real_data_root, tmp_path) -> None:
    """An unexpected exception (a simulated bug for hidden=[7]) fails that job only;
    the basic launcher still runs the rest, then the sweep exits non-zero."""
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-c", CRASH_HIDDEN_7, "-m", "model.hidden=[7],[64,32]",
         "optim.lr=100,0.001", "epochs=2", "data.train_size=2048",
         "data.test_size=500", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "simulated bug" in result.stderr
    by_dir = {p.name: read_status(p)[0] for p in sweep_dir.glob("*/")}
    assert len(by_dir) == 4
    failed = [d for d, s in by_dir.items() if s["status"] == "failed"]
    assert sorted(failed) == sorted(d for d in by_dir if "model.hidden=[7]" in d)
    sweep = read_sweep([sweep_dir])
    assert sweep.results["run"].nunique() == 1  # hidden=[64,32], lr=0.001
    assert [Path(run).name for run, _ in sweep.diverged] == [
        "data.test_size=500,data.train_size=2048,epochs=2,model.hidden=[64,32],"
        "optim.lr=100"
    ]
    assert all(
        "failed after 0 of 2 epochs: RuntimeError: simulated bug" in why
        for _, why in sweep.skipped
    )
    assert len(sweep.skipped) == 2
    report = run_module(["fashionbn.aggregate", str(sweep_dir)], tmp_path)
    assert report.returncode == 0, report.stderr
    text = (sweep_dir / "report.md").read_text()
    assert "## Diverged runs" in text and "## Skipped runs" in text


@pytest.mark.slow
def test_a_bad_input_in_one_job_does_not_stop_the_sweep(
    real_data_root, tmp_path
) -> None:
    """Like an exception: the bad job is reported (its run.log says why), the others
    run, the sweep ends with the error line and a non-zero exit code."""
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "model=batchnorm", "model.norm_eps=-1,1e-5",
         "seed=0,1", "epochs=1", "data.train_size=2048", "data.test_size=500",
         f"data.root={real_data_root}", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = "error: model.norm_eps=-1.0: must be > 0"
    ending = result.stderr.split("Error executing job with overrides:")[1]
    assert ending.splitlines()[1].startswith(message)  # Hydra's last word: one line
    complete = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.csv"))
    assert complete == [
        "data.test_size=500,data.train_size=2048,epochs=1,model.norm_eps=1e-05,"
        f"model=batchnorm,seed={seed}"
        for seed in (0, 1)
    ]
    for seed in (0, 1):
        bad = sweep_dir / (
            "data.test_size=500,data.train_size=2048,epochs=1,model.norm_eps=-1,"
            f"model=batchnorm,seed={seed}"
        )
        assert message in (bad / "run.log").read_text()
        assert not (bad / "status.json").exists()


@pytest.mark.slow
def test_two_identical_sweeps_at_once_train_each_job_once(
    real_data_root, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "fashionbn.run", "-m", "model=baseline,batchnorm",
               "seed=0,1", "epochs=3", "data.train_size=20000", "data.test_size=1000",
               "threads=1", f"data.root={real_data_root}",
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    stderr = [p.communicate(timeout=600)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], stderr
    logs = [job.read_text() for job in sweep_dir.glob("*/run.log")]
    assert len(logs) == 4
    for log in logs:  # each job trained by exactly one of the two processes
        assert log.count("epoch 1/3") == 1, log
    skipped = sum(
        err.count("being trained by another process") + err.count("complete already")
        for err in stderr
    )
    assert skipped == 4
    assert {s["status"] for s in statuses(sweep_dir)} == {"complete"}


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_a_parallel_sweep_stops_its_workers(
    stop, real_data_root, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "fashionbn.run", "-m", "hydra/launcher=local_parallel",
         "model=baseline,batchnorm", "epochs=50", "data.train_size=20000",
         "data.test_size=1000", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both jobs have finished an epoch
        now = statuses(sweep_dir)
        if len(now) == 2 and all(s["epochs_done"] >= 1 for s in now):
            break
        time.sleep(0.05)
    workers = children(process.pid)
    assert workers
    process.send_signal(stop)
    _, err = process.communicate(timeout=60)
    if stop != signal.SIGKILL:
        assert process.returncode == 130
        assert "interrupted: finished epochs are saved; re-run the same" in err
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "a worker outlived the sweep"
    files = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*.*")}
    time.sleep(1.0)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*.*")} == files
    assert all(s["status"] == "running" for s in statuses(sweep_dir))


def test_status_file_is_valid_json_with_the_config(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    cfg = compose_config(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}", "epochs=2"]
    )
    run_job(cfg, tmp_path / "job")
    status = json.loads((tmp_path / "job" / "status.json").read_text())
    assert status["status"] == "complete" and status["epochs_done"] == 2
    assert status["config"]["optim"]["lr"] == 0.001
    assert status["format"] == RESULTS_FORMAT
    assert status["execution"][0]["device"] == "cpu"
    # where the data is and how the run is executed are not part of its identity
    assert "root" not in status["config"]["data"]
    assert not {"device", "threads", "force"} & set(status["config"])
    assert raw_dir(tmp_path / "root").is_dir()
