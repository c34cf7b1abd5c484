"""Cohorts as cluster jobs (hydra/launcher=batched_slurm) without a cluster: which
jobs go to the scheduler together, what a cluster job sends back, what its node does
on SIGTERM (scancel, the time limit), and the line a job the scheduler stopped gets.
The launcher against a real one-node cluster is in test_slurm.py."""

import json
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus

from fashionbn.config import ConfigError, FashionbnError
from fashionbn.config.settings import run_settings
from fashionbn.jobs import sizing
from fashionbn.jobs.cluster import (
    SKIPPED,
    Stopped,
    cohort_jobs,
    plain,
    train_cohort_job,
)
from fashionbn.jobs.cohort import PendingJob
from fashionbn.jobs.files import read_metrics, read_status
from fashionbn.jobs.job import job_lock
from tests.conftest import REPO, compose_config, run_module, saved_epochs

TINY = ["data.train_size=600", "data.test_size=300", "threads=1", "epochs=1"]


def pending(root: Path, data_root: Path, name: str, *overrides: str, dir_name=None):
    cfg = compose_config([f"data.root={data_root}", *TINY, *overrides])
    out = root / (dir_name or name)
    out.mkdir(exist_ok=True)  # Hydra makes it when it sets the job up
    return PendingJob(run_settings(cfg), out, root, name, 0)


def names(rounds) -> list[list[list[str]]]:
    return [[[job.name for job in cj] for cj in turn] for turn in rounds]


def test_cluster_jobs_group_what_can_share_a_program(real_data_root, tmp_path,
                                                     monkeypatch):  # fmt: skip
    """Same model, device and data copy: one cluster job of max_cohort runs at most;
    a job the batched path cannot train: one of its own, after them; a job sharing a
    dir with an earlier one: in the next turn."""
    jobs = [
        *(pending(tmp_path, real_data_root, f"b{s}", "model=baseline", f"seed={s}",
                  "device=cpu") for s in range(3)),
        *(pending(tmp_path, real_data_root, f"n{s}", "model=batchnorm", f"seed={s}",
                  "device=cpu") for s in range(2)),
        pending(tmp_path, real_data_root, "adam", "optim=adam", "device=cpu"),
        pending(tmp_path, real_data_root, "again", "model=baseline", "seed=5",
                "device=cpu", dir_name="b0"),
    ]  # fmt: skip
    jobs[5].alone = "optim=adam"
    assert names(cohort_jobs(jobs, 2)) == [
        [["b0", "b1"], ["b2"], ["n0", "n1"], ["adam"]],
        [["again"]],
    ]
    # null: the CPU cache rule for device=cpu (here made to say 2), even sizes
    monkeypatch.setattr(sizing, "cohort_limit", lambda run, device: 2)
    assert names(cohort_jobs(jobs[:5], None)) == [[["b0", "b1"], ["b2"], ["n0", "n1"]]]
    # cuda/auto: every run that can share a program (the node splits by its memory)
    auto = [pending(tmp_path, real_data_root, f"a{s}", f"seed={s}", "device=auto")
            for s in range(3)]  # fmt: skip
    assert names(cohort_jobs(auto, None)) == [[["a0", "a1", "a2"]]]
    # another copy of the data trains apart
    other = pending(tmp_path, real_data_root, "copy", "seed=9", "device=auto",
                    f"data.system_dir={tmp_path}")  # fmt: skip
    assert names(cohort_jobs([*auto, other], None)) == [[["a0", "a1", "a2"], ["copy"]]]


def test_a_model_that_cannot_be_built_makes_cluster_jobs_of_one(
    real_data_root, tmp_path
):
    """GroupNorm of 3 groups over 64 units cannot be built, so the CPU cache rule
    cannot size its cohort: its jobs are cluster jobs of one each (each then fails
    with its own line on its node), and no error reaches the submitting sweep."""
    bad = [pending(tmp_path, real_data_root, f"g{s}", "model=groupnorm",
                   "model.norm.num_groups=3", f"seed={s}", "device=cpu")
           for s in range(2)]  # fmt: skip
    good = [pending(tmp_path, real_data_root, f"b{s}", f"seed={s}", "device=cpu")
            for s in range(2)]  # fmt: skip
    assert names(cohort_jobs([*bad, *good], None)) == [[["g0"], ["g1"], ["b0", "b1"]]]


def test_what_a_cluster_job_sends_back_unpickles_anywhere() -> None:
    class PluginError(FashionbnError):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    back = [plain(0.8125, None), plain(None, None), plain(None, "SIGTERM"),
            plain(PluginError("x", "y"), "SIGTERM"), plain(KeyError("k"), None),
            plain(ConfigError("bad"), None)]  # fmt: skip
    again = pickle.loads(pickle.dumps(back))
    assert again[:3] == [0.8125, SKIPPED, Stopped("SIGTERM")]
    assert type(again[3]) is FashionbnError and str(again[3]) == "x and y"
    assert type(again[4]) is RuntimeError and str(again[4]) == "KeyError: 'k'"
    assert type(again[5]) is FashionbnError and str(again[5]) == "bad"


def test_a_cluster_job_trains_its_cohort_as_the_local_launcher(real_data_root,
                                                               tmp_path):  # fmt: skip
    """The PendingJobs as the scheduler carries them (pickled), trained on the
    'node': each job's test accuracy back, files as any batched run's, and
    status.json naming the SLURM job."""
    jobs = [pending(tmp_path, real_data_root, f"s{s}", f"seed={s}", "epochs=2",
                    "device=cpu") for s in (0, 1)]  # fmt: skip
    carried = pickle.loads(pickle.dumps(jobs))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_ARRAY_JOB_ID", "41")
        patch.setenv("SLURM_ARRAY_TASK_ID", "3")
        term, usr2 = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
        back = train_cohort_job(carried, None)
    assert signal.getsignal(signal.SIGTERM) is term  # the process as it was
    assert signal.getsignal(signal.SIGUSR2) is usr2
    for job, result in zip(jobs, back):
        records = read_metrics(job.out_dir)
        assert len(records) == 2 and result == records[-1]["test_acc"]
        status = read_status(job.out_dir)[0]
        assert status["status"] == "complete"
        assert status["execution"][-1]["launcher"] == "batched"
        assert status["execution"][-1]["slurm_job"] == "41_3"
        assert status["execution"][-1]["cohort"] == 2
    # sent again (a re-submitted sweep): nothing trains, the same results come back
    assert train_cohort_job(pickle.loads(pickle.dumps(jobs)), None) == back


NODE = """
import json, sys
from pathlib import Path
from fashionbn.config.settings import run_settings
from fashionbn.jobs.cluster import Stopped, train_cohort_job
from fashionbn.jobs.cohort import PendingJob
from fashionbn.api import compose_config
root = Path(sys.argv[1])
jobs = [PendingJob(run_settings(compose_config(
            [f"data.root={sys.argv[2]}", "data.train_size=20000",
             "data.test_size=300", "threads=1", "device=cpu", "epochs=200",
             f"seed={s}"])), root / f"s{s}", root, f"s{s}", s) for s in (0, 1)]
for job in jobs:
    job.out_dir.mkdir()
back = train_cohort_job(jobs, None)
print(json.dumps([r.signal if isinstance(r, Stopped) else repr(r) for r in back]))
"""


def test_sigterm_on_the_node_stops_the_cohort_with_its_epochs_saved(
    real_data_root, tmp_path
):
    """scancel and the time limit send SIGTERM (submitit's own handler ignores it,
    and the job would train on until SIGKILL): the cohort stops as on Ctrl-C, each
    unfinished job is sent back as Stopped, and its dir holds every epoch it
    saved, to be resumed."""
    script = tmp_path / "node.py"
    script.write_text(textwrap.dedent(NODE))
    node = subprocess.Popen([sys.executable, str(script), str(tmp_path),
                             str(real_data_root)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    done = saved_epochs(tmp_path, "s*", 2, 2, node, timeout=120)
    assert len(done) == 2, f"no two epochs saved: {node.communicate()[1][-3000:]}"
    node.send_signal(signal.SIGTERM)
    out, err = node.communicate(timeout=120)
    assert node.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == ["SIGTERM", "SIGTERM"]
    assert "stopped by SIGTERM: finished epochs are saved" in err
    assert "Traceback" not in err
    for seed in (0, 1):
        status = read_status(tmp_path / f"s{seed}")[0]
        assert status["status"] == "running"
        assert 2 <= status["epochs_done"] < 200
        assert len(read_metrics(tmp_path / f"s{seed}")) == status["epochs_done"]


def launcher_returns(tmp_path, real_data_root, results, monkeypatch):
    """BatchedSlurmLauncher.train over two set-up jobs whose cluster jobs sent
    `results` back (the scheduler replaced by a stand-in)."""
    from hydra_plugins.fashionbn_slurm_launcher import batched_slurm

    jobs = [pending(tmp_path, real_data_root, f"s{s}", f"seed={s}") for s in (0, 1)]
    for k, job in enumerate(jobs):
        job.job_num = 3 + k

    def on_cluster(members, max_cohort, folder, parameters, describe):
        assert parameters["timeout_min"] == 7 and parameters["slurm_partition"] == "p"
        for job, result in zip(members, results):  # as train_on_cluster sets them
            stopped = isinstance(result, Stopped)
            job.result = FashionbnError(describe(job, result)) if stopped else result

    monkeypatch.setattr(batched_slurm, "train_on_cluster", on_cluster)
    runs = []
    for k, job in enumerate(jobs):
        ret = JobReturn(overrides=[f"seed={k}", "model=baseline", "hydra.x=1"],
                        status=JobStatus.COMPLETED)  # fmt: skip
        ret.return_value = job
        runs.append(ret)
    batched_slurm.BatchedSlurmLauncher(timeout_min=7, partition="p").train(runs)
    return runs


def test_a_job_the_scheduler_stopped_fails_alone_with_its_line(
    real_data_root, tmp_path, monkeypatch
):
    runs = launcher_returns(
        tmp_path, real_data_root,
        [0.75, Stopped("SIGTERM", "TIMEOUT", "12_4")], monkeypatch,
    )  # fmt: skip
    assert runs[0].status == JobStatus.COMPLETED and runs[0].return_value == 0.75
    assert runs[1].status == JobStatus.FAILED
    assert str(runs[1]._return_value) == (
        "error: job #4 (seed=1 model=baseline) ended on the scheduler (cluster job "
        "12_4) as TIMEOUT before it finished; it ran past "
        "hydra.launcher.timeout_min=7: raise it. Its dir keeps the epochs saved so "
        "far: run the same command again to continue from there"
    )  # fmt: skip
    # a state the scheduler had not settled: the signal says what stopped it
    stopped = [Stopped("SIGKILL", "", "12_4"), Stopped("SIGTERM", "COMPLETED", "12_4")]
    runs = launcher_returns(tmp_path, real_data_root, stopped, monkeypatch)
    assert "as UNKNOWN before it finished; the scheduler says UNKNOWN (stopped by " \
           "SIGKILL)." in str(runs[0]._return_value)  # fmt: skip
    assert ("as COMPLETED before it finished; its node had SIGTERM, though the "
            "scheduler did not end it (e.g. scancel --signal=TERM).") in str(
        runs[1]._return_value
    )  # fmt: skip
    # a job's own failure keeps its line; anything else stays an exception
    runs = launcher_returns(tmp_path, real_data_root,
                            [FashionbnError("bad data"), RuntimeError("KeyError: 'k'")],
                            monkeypatch)  # fmt: skip
    assert str(runs[0]._return_value) == "error: bad data"
    assert isinstance(runs[1]._return_value, RuntimeError)


def test_without_submitit_the_launcher_says_what_to_install(real_data_root, tmp_path,
                                                           monkeypatch):  # fmt: skip
    from hydra_plugins.fashionbn_slurm_launcher.batched_slurm import (
        BatchedSlurmLauncher,
    )

    monkeypatch.setitem(sys.modules, "submitit", None)
    ret = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED)
    ret.return_value = pending(tmp_path, real_data_root, "s0", "seed=0")
    with pytest.raises(Exception, match=r"batched_slurm needs submitit: pip install"):
        BatchedSlurmLauncher().train([ret])


@pytest.mark.parametrize(
    "setting, line",
    [
        ("hydra.launcher.timeout_min=0", "error: hydra.launcher.timeout_min=0: must "
         "be >= 1 (minutes per cluster job; SLURM reads 0 as no limit at all)"),
        ("hydra.sweep.dir={tmp}/at_%u", "/at_%u/.submitit/%j: sbatch expands '%' in "
         "its log paths (%u, %x, ...): choose a hydra.sweep.dir without '%'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("launcher", ["batched_slurm", "slurm"])
def test_settings_slurm_cannot_work_with_are_refused_first(tmp_path, launcher,
                                                          setting, line):  # fmt: skip
    """Refused in one line before any job is set up or submitted (no cluster is
    asked: these run without one)."""
    setting = setting.format(tmp=tmp_path)
    sweep = [setting] if "sweep.dir" in setting else [
        setting, f"hydra.sweep.dir={tmp_path / 's'}"]  # fmt: skip
    done = run_module(["fashionbn.run", "-m", f"hydra/launcher={launcher}",
                       "seed=0,1", *TINY, *sweep], REPO)  # fmt: skip
    assert done.returncode == 1
    assert line in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.rglob(".hydra")) and not list(tmp_path.rglob(".submitit"))
    assert not list(tmp_path.rglob("multirun.yaml"))  # nothing written at all


def test_an_sbatch_refusal_is_one_line() -> None:
    from hydra_plugins.fashionbn_slurm_launcher.slurm_launcher import refused_line

    said = ("Command '['sbatch', '/x/.submitit/submission_file_1.sh']' returned "
            "non-zero exit status 1.\nsbatch: error: invalid partition specified: "
            "nope\nsbatch: error: Batch job submission failed: Invalid partition "
            "name specified\n")  # fmt: skip
    assert refused_line(RuntimeError(said)) == (
        "error: sbatch refused the jobs: sbatch: error: invalid partition specified: "
        "nope (see hydra.launcher.*: partition, gpus_per_node, cpus_per_task, "
        "mem_gb, timeout_min)"
    )


def test_execution_names_each_slurm_job_that_trained_the_run(monkeypatch) -> None:
    """A run started in cluster job 90 and finished locally (or in job 91) has an
    entry for each, without the 'numbers may differ' warning (same thread count,
    device and torch); a resume in the same kind of process adds none."""
    from fashionbn.jobs.job import execution_info, with_execution
    from fashionbn.jobs.previous import RESUME, Previous

    cpu = torch.device("cpu")
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    here = {**execution_info(cpu), "launcher": "batched"}
    there = {**here, "slurm_job": "90", "cohort": 2}
    previous = Previous(RESUME, execution=[there])
    assert with_execution(previous, cpu, {"launcher": "batched"}) == [there, here]
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    again = with_execution(previous, cpu, {"launcher": "batched"})
    assert again == [there, {**here, "slurm_job": "91"}]
    monkeypatch.setenv("SLURM_JOB_ID", "90")  # requeued: the same job again
    assert with_execution(previous, cpu, {"launcher": "batched"}) == [there]
    local = Previous(RESUME, execution=[{**here, "cohort": 4}])
    monkeypatch.delenv("SLURM_JOB_ID")
    assert with_execution(local, cpu, {"launcher": "batched"}) == local.execution


class FakeClusterJob:
    """A submitit job as sent_back sees it: what it sends back each time it ends,
    and the states the scheduler gives after each."""

    def __init__(self, sent: list, states: list[str]):
        self.job_id, self.sent, self.states = "5", list(sent), list(states)
        self.paths = type("Paths", (), {"stderr": Path("/nonexistent/5.err")})()

    def done(self) -> bool:
        return True

    def result(self):
        return self.sent.pop(0)

    def get_info(self, mode: str) -> dict:
        return {"State": self.states.pop(0)}


def test_a_requeued_cohort_job_is_waited_for_again(monkeypatch, caplog) -> None:
    """Preemption or `scontrol requeue` after the node stopped: the job will run
    the same cohort again (it resumes), so its end is waited for, not reported as
    a failure; a job stopped for good gets the scheduler's final state."""
    from hydra_plugins.fashionbn_slurm_launcher import batched_slurm

    monkeypatch.setattr(batched_slurm, "SETTLE_S", 0.0)
    monkeypatch.setattr(batched_slurm, "POLL_S", 0.0)
    stopped = [Stopped("SIGTERM"), Stopped("SIGTERM")]
    # stopped; then pending, running (its old results file still there: done()
    # says True), and only then done for good
    states = ["PENDING", "PENDING", "RUNNING", "COMPLETED"]
    requeued = FakeClusterJob([stopped, [0.81, 0.82]], states)
    with caplog.at_level("INFO"):
        assert batched_slurm.sent_back(requeued, 2) == [0.81, 0.82]
    assert requeued.states == []  # waited until the scheduler said it ended
    assert caplog.text.count("cluster job 5 was requeued (the scheduler says "
                             "PENDING): waiting for it again") == 1  # fmt: skip
    cancelled = FakeClusterJob([[0.81, Stopped("SIGTERM")]], ["CANCELLED by 0"])
    assert batched_slurm.sent_back(cancelled, 2) == [
        0.81, Stopped("SIGTERM", "CANCELLED by 0", "5")]  # fmt: skip


def finished_job(tmp_path: Path, data_root: Path, name: str, *overrides: str):
    """A PendingJob whose dir holds its run finished (trained here, alone)."""
    from fashionbn.jobs.job import run_job

    job = pending(tmp_path, data_root, name, *overrides)
    cfg = compose_config([f"data.root={data_root}", *TINY, *overrides])
    records = run_job(cfg, job.out_dir)
    return job, records


def test_a_finished_run_needs_no_cluster_job_and_the_launcher_sends_none(
    real_data_root, tmp_path, monkeypatch
):
    """A re-run of a finished batched_slurm sweep: each finished job is settled from
    its files on the submitting machine (its test_acc, its line, in its run.log
    too), nothing is sent — not even submitit is needed — and its files are left as
    they were."""
    from fashionbn.jobs.cluster import finished_here
    from hydra_plugins.fashionbn_slurm_launcher.batched_slurm import (
        BatchedSlurmLauncher,
    )

    job, records = finished_job(tmp_path, real_data_root, "s0", "seed=0")

    def files() -> dict:
        return {p.name: p.read_bytes() for p in job.out_dir.iterdir()
                if p.name != "run.log"}  # fmt: skip

    run_log = job.out_dir / "run.log"  # (Hydra's: none here, trained by run_job)
    before, log_before = files(), run_log.read_text() if run_log.exists() else ""
    again = pending(tmp_path, real_data_root, "s0", "seed=0")
    assert finished_here(again, {}) and again.result == records[-1]["test_acc"]
    monkeypatch.setitem(sys.modules, "submitit", None)  # would be needed to send
    ret = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED)
    ret.return_value = pending(tmp_path, real_data_root, "s0", "seed=0")
    BatchedSlurmLauncher().train([ret])
    assert ret.status == JobStatus.COMPLETED
    assert ret.return_value == records[-1]["test_acc"]
    assert files() == before
    added = run_log.read_text()[len(log_before) :].splitlines()
    assert len(added) == 2  # once by finished_here, once by the launcher
    assert all(line.endswith(" - s0 is complete already; skipping it (no cluster "
                             "job)") for line in added)  # fmt: skip


def test_anything_but_a_finished_run_as_it_is_goes_to_the_node(
    real_data_root, tmp_path
):
    """finished_here says no (the node's checks decide, as before) for force=true,
    another config, an unfinished run, a changed metrics.csv, a killed writer's
    debris, an extension under way, other data, and data this machine lacks; it
    changes nothing in the dir, nor in a data.root without the dataset."""
    from fashionbn.jobs.cluster import finished_here

    def says(*overrides, data_root=real_data_root, dir_name="s0") -> bool:
        job = pending(tmp_path, data_root, "x", *overrides, dir_name=dir_name)
        return finished_here(job, {})

    job, _ = finished_job(tmp_path, real_data_root, "s0", "seed=0")
    assert says("seed=0")
    with job_lock(job.out_dir):  # another process's (e.g. extending it right now)
        assert not says("seed=0")
    assert not says("seed=0", "force=true")
    assert not says("seed=1")  # another config in the dir
    empty = tmp_path / "no_data"
    empty.mkdir()
    assert not says("seed=0", "data.system_dir=null", data_root=empty)
    assert list(empty.iterdir()) == []  # nothing prepared there
    metrics = job.out_dir / "metrics.csv"
    kept = metrics.read_bytes()
    metrics.write_bytes(kept.replace(b"\n1,", b"\n1,9", 1))
    assert not says("seed=0")
    metrics.write_bytes(kept)
    assert says("seed=0")
    for debris in (".status.json.partial-1", "checkpoint.finished.pt"):
        (job.out_dir / debris).write_bytes(b"")
        assert not says("seed=0")
        (job.out_dir / debris).unlink()
    status = json.loads((job.out_dir / "status.json").read_text())
    for change in ({"status": "running"}, {"data_sha256": "0" * 64}):
        (job.out_dir / "status.json").write_text(json.dumps({**status, **change}))
        assert not says("seed=0")
    (job.out_dir / "status.json").write_text(json.dumps(status))
    assert says("seed=0")
