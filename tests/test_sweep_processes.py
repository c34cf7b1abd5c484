"""Whole sweeps as real subprocesses: killed and resumed, a crashing or bad job among
good ones, two identical sweeps at once, a stopped parallel sweep, the status file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fashionbn.analysis.table import read_sweep
from fashionbn.core.data import raw_dir
from fashionbn.jobs.files import RESULTS_FORMAT, read_metrics, read_status
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config, run_module, without_seconds

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
