"""A sweep's cohorts as cluster jobs (hydra/launcher=batched_slurm): which jobs go to
the scheduler together (`cohort_jobs`, in the submitting process) and what one cluster
job runs on its node (`train_cohort_job`: fashionbn.jobs.cohort.run_cohorts on the
PendingJobs it was sent, each job's result sent back as a plain value).

The node does what the local batched launcher does, with the same job dirs and rules
(lock, skip, resume, refuse, files after every epoch, one `error:` line per failed
job in its run.log): the submitting process only sets the jobs up (their dirs and
`.hydra/`, as Hydra's launchers do) and waits. A cluster job the scheduler stops
(`scancel`, its time limit, preemption: SIGTERM) stops where the local command stops
on Ctrl-C — the epochs saved so far stay, and the same command continues them.
Nothing here imports submitit.
"""

import logging
import signal
import socket
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

import torch

from fashionbn.config import FashionbnError
from fashionbn.core.data import digest_if_present
from fashionbn.core.stacking import cohort_key
from fashionbn.jobs.cohort import (
    PendingJob,
    job_file_log,
    job_log,
    run_cohorts,
    turns,
)
from fashionbn.jobs.resume import finished_as_it_is
from fashionbn.jobs.sizing import cohort_size, split

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's


@dataclass(frozen=True)
class Stopped:
    """A job of a cluster job that the scheduler stopped before it finished (its
    dir keeps the epochs saved so far): the signal that stopped it on its node
    (SIGKILL: the cluster job sent nothing back), and the cluster job's id and state
    on the scheduler (filled in by the submitting process)."""

    signal: str
    state: str = ""
    cluster_job: str = ""


SKIPPED = "skipped"  # a job another process was training: its dir was left alone


def finished_here(job: PendingJob, digests: dict) -> bool:
    """True, with the job's result set and its line logged, where its dir holds this
    run finished as it is and the data its run names is here to say it is the
    same (`digests`: by data spec, filled in): a re-run of a finished sweep sends
    nothing to the scheduler. Anything else — and data this machine does not have —
    goes to the node, whose checks decide, as before."""
    key = repr(job.run.data)  # (a read-only config node: its content)
    if key not in digests:
        try:
            digests[key] = digest_if_present(job.run.data)
        except (FashionbnError, OSError):
            digests[key] = None
    finished = finished_as_it_is(job.out_dir, job.run.identity, job.run.force,
                                 digests[key])  # fmt: skip
    if finished is None:
        return False
    status, records = finished
    job.result = records[-1]["test_acc"]
    job.file_log = job_file_log(job.out_dir)  # (closed after the line)
    job_log(job, logging.INFO, f"{job.out_dir.name} is {status} already; skipping "
            "it (no cluster job)")  # fmt: skip
    job.file_log = None
    return True


def cohort_jobs(
    jobs: list[PendingJob], max_cohort: Optional[int]
) -> list[list[list[PendingJob]]]:
    """The jobs as cluster jobs, turn by turn (jobs sharing one dir run in turns, as
    under every launcher; a turn starts when the one before has ended). Jobs that
    can share one program, ask for the same device and read the same copy of the
    data go together: `max_cohort` runs per cluster job at most; with null, as many
    as the CPU cache rule gives for device=cpu (measured on the submitting machine:
    set max_cohort where the nodes differ), all of them for cuda/auto (the node
    splits them if half its free GPU memory does not hold them). A job the batched
    path cannot train (`alone`) is a cluster job of its own."""
    rounds = []
    for turn in turns(jobs):
        groups: dict[tuple, list[PendingJob]] = defaultdict(list)
        cluster_jobs, alone = [], []
        for job in turn:
            if job.alone:
                alone.append([job])
                continue
            where = (str(job.run.data.root), str(job.run.data.system_dir))
            groups[(job.run.device, where, cohort_key(job.run.identity))].append(job)
        for (device, _, _), members in groups.items():
            limit = max_cohort
            if limit is None:
                limit = (
                    cohort_size(members[0].run, torch.device("cpu"), None)
                    if device == "cpu"
                    else len(members)
                )
            cluster_jobs += split(members, limit, even=max_cohort is None)
        rounds.append(cluster_jobs + alone)
    return rounds


def interrupt(signum: int, frame) -> None:
    """SIGTERM on the node -> KeyboardInterrupt: the cohort stops as on Ctrl-C."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def train_cohort_job(jobs: list[PendingJob], max_cohort: Optional[int]) -> list[Any]:
    """What one cluster job runs: its jobs trained as the local batched launcher
    trains them (fashionbn's lines on stderr, the scheduler's log, and in each job's
    run.log). Returns each job's result as a value that pickles on any node: its
    test accuracy, SKIPPED (another process holds its dir), a FashionbnError
    (its one line), a RuntimeError (anything else; the traceback is in the logs),
    or Stopped when the scheduler stopped the cluster job first."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("fashionbn")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stopped: Optional[str] = None
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
    # scancel, the time limit and preemption send SIGTERM (submitit's own handler
    # ignores it, so the job would train on until SIGKILL); submitit's early warning
    # of the time limit (SIGUSR2) needs nothing: the files are saved every epoch
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    here = []
    for job in jobs:
        if job.out_dir.is_dir():
            here.append(job)
        else:  # set up by the submitting machine, in a dir this node does not see
            job.result = FashionbnError(
                f"{job.out_dir} does not exist on {socket.gethostname()}: "
                "hydra.sweep.dir must be on a file system that the submitting "
                "machine and the nodes share"
            )
            logger.error("%s: error: %s", job.name, job.result)
    try:
        run_cohorts(here, max_cohort)
    except KeyboardInterrupt as stop:
        stopped = str(stop) or "SIGINT"
        line = (f"stopped by {stopped}: finished epochs are saved; the same command "
                "continues them")  # fmt: skip
        logger.warning(line)
        for job in here:  # its run.log says so too
            if job.result is None:
                job_log(job, logging.WARNING, line)
    finally:  # the process as it was (a test may call this in its own)
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGUSR2, before[1])
        logger.removeHandler(handler)
        logger.setLevel(level)
    return [plain(job.result, stopped) for job in jobs]


def plain(result: Any, stopped: Optional[str]) -> Any:
    """A job's result as a value that unpickles anywhere (an exception of a plug-in's
    class might not)."""
    if isinstance(result, FashionbnError):
        return FashionbnError(str(result))
    if isinstance(result, BaseException):
        return RuntimeError(f"{type(result).__name__}: {result}")
    if result is None:  # stopped, or skipped: another process trains its dir
        return Stopped(stopped) if stopped is not None else SKIPPED
    return result
