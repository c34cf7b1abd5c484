"""hydra/launcher=slurm against a real one-node SLURM cluster (`.ci/slurm-up`, which
`.ci/run` starts before the tests): the sweep's numbers equal the basic launcher's, and
no stream of sacct warnings on a cluster without accounting. Skipped, with the command
that starts a cluster, where none answers; FASHIONBN_REQUIRE_SLURM=1 (set by .ci/run)
turns the skip into a failure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fashionbn.jobs.scheduler import accounting, squeue_command
from tests.conftest import REPO, run_module, saved_epochs


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                              text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


UP = cluster_answers()
if not UP and os.environ.get("FASHIONBN_REQUIRE_SLURM") == "1":
    raise RuntimeError("FASHIONBN_REQUIRE_SLURM=1 but no SLURM cluster answers sinfo")
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not UP,
        reason="no SLURM cluster answers sinfo: start one "
        "with `sudo bash .ci/slurm-up`",
    ),  # fmt: skip
]


@pytest.fixture(scope="module", autouse=True)
def past_its_time_limit(real_data_root, tmp_path_factory):
    """A cohort job with a 1-minute limit and hours of training, started when this
    module starts (SLURM enforces limits about once a minute, so it ends a minute or
    two later, while the other tests run beside it on the node's other core): the
    last test reads what its sweep said."""
    sweep = tmp_path_factory.mktemp("time_limit") / "sweep"
    command = [sys.executable, "-m", "fashionbn.run", "-m", "seed=0", "epochs=1000",
               "threads=1", f"data.root={real_data_root}", "data.train_size=30000",
               "data.test_size=500", "device=cpu", "hydra/launcher=batched_slurm",
               "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.timeout_min=1", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    running = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    yield running, sweep
    if running.poll() is None:
        running.kill()


SLURM = ["hydra/launcher=slurm", "hydra.launcher.mem_gb=1",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]  # fmt: skip


def metrics(sweep: Path) -> dict[str, list[dict]]:
    """Each job dir's metrics.csv without the timings, by dir name (empty cells as
    None, so that two empty cells compare equal)."""
    tables = {}
    for job in sorted(sweep.iterdir()):
        if (job / "metrics.csv").is_file():
            frame = pd.read_csv(job / "metrics.csv").drop(columns="seconds")
            tables[job.name] = (
                frame.astype(object).where(frame.notna(), None).to_dict("records")
            )
    return tables


def test_a_sweep_through_slurm_equals_the_basic_launchers(real_data_root, tmp_path):
    common = ["model=baseline,batchnorm", "seed=0", "epochs=2", "threads=1",
              f"data.root={real_data_root}", "data.train_size=600",
              "data.test_size=500", "device=cpu"]  # fmt: skip
    through = run_module(["fashionbn.run", "-m", *common, *SLURM,
                          f"hydra.sweep.dir={tmp_path / 'slurm'}"], REPO)  # fmt: skip
    assert through.returncode == 0, through.stderr[-3000:]
    alone = run_module(["fashionbn.run", "-m", *common,
                        f"hydra.sweep.dir={tmp_path / 'basic'}"], REPO)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    got, expected = metrics(tmp_path / "slurm"), metrics(tmp_path / "basic")
    assert len(got) == 2 and got == expected
    if not accounting():  # the one-node cluster has none: no warning per poll
        assert "sacct" not in through.stdout + through.stderr


def test_squeue_answers_as_sacct_would(tmp_path) -> None:
    """The command submitit asks where sacct does not answer: a job submitted here
    is found by id with its state, in sacct's parsable format, read by submitit."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    job = subprocess.run(["sbatch", "--parsable", "--mem=100M", f"--chdir={tmp_path}",
                          "--wrap", "true"], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    subprocess.run(["srun", "--mem=100M", "true"], check=True, timeout=120)
    output = subprocess.check_output(squeue_command([job]), text=True)
    assert output.splitlines()[0] == "JobID|State|NodeList"
    info = SlurmInfoWatcher().read_info(output)
    assert info[job]["State"] in {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}


def test_a_cancelled_job_fails_alone_and_the_same_command_resumes_it(
    real_data_root, tmp_path
):
    """scancel of one running job: that job fails with its one line (state
    CANCELLED, run the same command again), the other finishes; the same command
    then resumes it from its last saved epoch and both end with the numbers of an
    uninterrupted sweep. The job stops at SIGTERM (submitit's own handler ignores
    it: the job would train on until KillWait's SIGKILL, and might finish)."""
    common = ["model=batchnorm,baseline", "seed=0", "epochs=20", "threads=1",
              f"data.root={real_data_root}", "data.train_size=30000",
              "data.test_size=500", "device=cpu"]  # fmt: skip
    sweep = tmp_path / "slurm"
    command = [sys.executable, "-m", "fashionbn.run", "-m", *common, *SLURM,
               f"hydra.sweep.dir={sweep}"]  # fmt: skip
    running = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    saved = saved_epochs(sweep, "*model=batchnorm*", 1, 3, running)
    assert saved, "the batchnorm job saved no 3 epochs in 300 s"
    batchnorm = saved[0]
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    first = [job for job in jobs if job.endswith("_0")][0]  # #0: model=batchnorm
    subprocess.run(["scancel", first], check=True)
    output, _ = running.communicate(timeout=300)
    assert running.returncode == 1, output[-3000:]
    assert "error: job #0 (model=batchnorm seed=0" in output
    assert "ended on the scheduler as CANCELLED before it finished; it was " in output
    assert "run the same command again to continue from there" in output
    assert "Traceback" not in output
    status = json.loads((batchnorm / "status.json").read_text())
    assert status["status"] == "running" and 3 <= status["epochs_done"] < 20
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.err"))
    assert "stopped by SIGTERM: finished epochs are saved" in logs
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.err"))
    assert f"after epoch {status['epochs_done']}" in logs  # resumed, not restarted
    alone = run_module(["fashionbn.run", "-m", *common,
                        f"hydra.sweep.dir={tmp_path / 'basic'}"], REPO)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert metrics(sweep) == metrics(tmp_path / "basic")


def test_the_line_of_a_job_past_its_time_limit() -> None:
    from hydra_plugins.fashionbn_slurm_launcher.slurm_launcher import ended_line

    assert ended_line(3, ["model=baseline", "seed=1", "hydra.launcher.x=1"],
                      "TIMEOUT", 5) == (
        "error: job #3 (model=baseline seed=1) ended on the scheduler as TIMEOUT "
        "before it finished; it ran past hydra.launcher.timeout_min=5: raise it. Its "
        "dir keeps the epochs saved so far: run the same command again to continue "
        "from there"
    )  # fmt: skip
    assert "as CANCELLED before" in ended_line(0, [], "CANCELLED by 0", 5)


def test_a_dataset_missing_on_the_node_fails_with_its_line(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    sweep = tmp_path / "sweep"
    done = run_module(["fashionbn.run", "-m", "model=baseline", "seed=0", "epochs=1",
                       f"data.root={missing}", f"data.system_dir={missing}",
                       "data.train_size=600", "data.test_size=500", "threads=1",
                       *SLURM, f"hydra.sweep.dir={sweep}"], REPO)  # fmt: skip
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert f"error: FashionMNIST not found: no IDX files in {missing}" in output
    assert "Traceback" not in output
    assert not list(sweep.glob("*/status.json"))  # nothing started


BATCHED_SLURM = ["hydra/launcher=batched_slurm", *SLURM[1:]]


def test_cohorts_through_slurm_equal_the_local_batched_launchers(real_data_root,
                                                                 tmp_path):  # fmt: skip
    """hydra/launcher=batched_slurm: one cluster job per cohort (here one per model),
    the same job dirs and numbers as hydra/launcher=batched, status.json naming
    the SLURM job that trained each run."""
    common = ["model=baseline,batchnorm", "seed=0,1", "epochs=2", "threads=1",
              f"data.root={real_data_root}", "data.train_size=600",
              "data.test_size=500", "device=cpu"]  # fmt: skip
    through = run_module(["fashionbn.run", "-m", *common, *BATCHED_SLURM,
                          f"hydra.sweep.dir={tmp_path / 'slurm'}"], REPO)  # fmt: skip
    assert through.returncode == 0, through.stderr[-3000:]
    local = run_module(["fashionbn.run", "-m", *common, "hydra/launcher=batched",
                        f"hydra.sweep.dir={tmp_path / 'local'}"], REPO)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    got, expected = metrics(tmp_path / "slurm"), metrics(tmp_path / "local")
    assert len(got) == 4 and got == expected
    submitted = [line for line in through.stdout.splitlines()
                 if "cluster job" in line and ": 2 runs (" in line]  # fmt: skip
    assert len(submitted) == 2, through.stdout
    for job in (tmp_path / "slurm").glob("*model=*"):
        execution = json.loads((job / "status.json").read_text())["execution"]
        assert len(execution) == 1 and execution[0]["cohort"] == 2
        assert execution[0]["slurm_job"] in " ".join(submitted)
    if not accounting():
        assert "sacct" not in through.stdout + through.stderr
    cluster_jobs = sorted((tmp_path / "slurm" / ".submitit").iterdir())
    again = run_module(["fashionbn.run", "-m", *common, *BATCHED_SLURM,
                        f"hydra.sweep.dir={tmp_path / 'slurm'}"], REPO)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    # a re-run of the finished sweep: settled from the job dirs, nothing submitted
    assert again.stdout.count("already; skipping it (no cluster job)") == 4
    assert "cluster job" not in again.stdout.replace("(no cluster job)", "")
    assert sorted((tmp_path / "slurm" / ".submitit").iterdir()) == cluster_jobs
    assert metrics(tmp_path / "slurm") == expected


def test_a_cancelled_cohort_job_fails_its_jobs_and_the_same_command_resumes_them(
    real_data_root, tmp_path
):
    """scancel of a running cohort job: its jobs fail, each with its one line (the
    cluster job, CANCELLED, run the same command again) — the node stops at
    SIGTERM, not at KillWait's SIGKILL —; the same command resumes them from their
    last saved epoch, to the numbers of an uninterrupted local batched sweep."""
    common = ["model=baseline", "seed=0,1", "epochs=20", "threads=1",
              f"data.root={real_data_root}", "data.train_size=30000",
              "data.test_size=500", "device=cpu"]  # fmt: skip
    sweep = tmp_path / "slurm"
    command = [sys.executable, "-m", "fashionbn.run", "-m", *common, *BATCHED_SLURM,
               f"hydra.sweep.dir={sweep}"]  # fmt: skip
    running = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    saved = saved_epochs(sweep, "*seed=*", 2, 3, running)
    assert len(saved) == 2, "the cohort saved no 3 epochs in 300 s"
    # this sweep's one cohort job, as its runs' status.json name it (the time-limit
    # test's cohort job may be in the queue too)
    job = sorted({json.loads((d / "status.json").read_text())["execution"][-1]
                  ["slurm_job"] for d in saved})  # fmt: skip
    assert len(job) == 1, job
    subprocess.run(["scancel", job[0]], check=True)
    output, _ = running.communicate(timeout=300)
    assert running.returncode == 1, output[-3000:]
    assert (f"error: job #0 (model=baseline seed=0 epochs=20 threads=1 "
            f"data.root={real_data_root}") in output  # fmt: skip
    line = (f"ended on the scheduler (cluster job {job[0]}) as CANCELLED before it "
            "finished; it was cancelled (scancel). Its dir keeps the epochs saved so "
            "far: run the same command again to continue from there")  # fmt: skip
    assert line in output
    assert "error: job #1 (model=baseline seed=1 epochs=20" in output  # each job's
    assert "Traceback" not in output
    done = []
    for job_dir in saved:
        assert "stopped by SIGTERM" in (job_dir / "run.log").read_text()
        status = json.loads((job_dir / "status.json").read_text())
        assert status["status"] == "running" and 3 <= status["epochs_done"] < 20
        done.append(status["epochs_done"])
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.err"))
    assert "stopped by SIGTERM: finished epochs are saved" in logs
    for epochs in done:  # resumed, not restarted
        assert f"resuming after epoch {epochs}" in logs
    local = run_module(["fashionbn.run", "-m", *common, "hydra/launcher=batched",
                        f"hydra.sweep.dir={tmp_path / 'local'}"], REPO)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    assert metrics(sweep) == metrics(tmp_path / "local")


def test_a_job_another_process_trains_is_skipped_with_its_line(real_data_root,
                                                               tmp_path):  # fmt: skip
    """A cohort job that finds a job's dir locked (the same sweep still training
    elsewhere) leaves it alone, and the submitting process says so — who holds it —
    instead of counting it done."""
    from fashionbn.jobs.job import job_lock

    sweep = tmp_path / "slurm"
    (sweep / "seed0").mkdir(parents=True)
    with job_lock(sweep / "seed0"):
        done = run_module(["fashionbn.run", "-m", "seed=0,1", "epochs=1", "threads=1",
                           f"data.root={real_data_root}", "data.train_size=600",
                           "data.test_size=500", "device=cpu", *BATCHED_SLURM,
                           f"hydra.sweep.dir={sweep}",
                           "hydra.sweep.subdir=seed${seed}"], REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert f"skipped: its dir is being trained by pid {os.getpid()} on " in output
    assert "ended: 1 of 2 runs done, 1 skipped" in output
    assert not (sweep / "seed0" / "metrics.csv").exists()
    assert (sweep / "seed1" / "metrics.csv").is_file()


def test_a_cohort_job_past_its_time_limit_is_reported_as_such(past_its_time_limit):
    """The scheduler ends the cohort job at its 1-minute limit (SIGTERM): its job
    fails with the TIMEOUT line, and its dir keeps the epochs saved until then."""
    running, sweep = past_its_time_limit
    output, _ = running.communicate(timeout=400)
    assert running.returncode == 1, output[-3000:]
    assert "ended on the scheduler (cluster job " in output
    said = [line for line in output.splitlines() if "ended on the scheduler" in line]
    timeout = ("as TIMEOUT before it finished; it ran past hydra.launcher.timeout_min"
               "=1: raise it. Its dir keeps the epochs saved so far")  # fmt: skip
    assert timeout in output, said
    assert "Traceback" not in output
    (job,) = [p for p in sweep.iterdir() if (p / "status.json").is_file()]
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "running" and 1 <= status["epochs_done"] < 1000
    assert "stopped by SIGTERM" in (job / "run.log").read_text()
