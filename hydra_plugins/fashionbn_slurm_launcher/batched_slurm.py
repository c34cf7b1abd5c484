"""hydra/launcher=batched_slurm: the batched launcher with each cohort sent to SLURM as
one job (submitit's SLURM executor, one job array per turn). Every job is set up here
as under hydra/launcher=batched (its dir, `.hydra/`, its settings in its own job
context); fashionbn.jobs.cluster groups them into cluster jobs, and each cluster job
trains its cohort on its node with the local launcher's rules and files. A job a
cluster job did not finish — `scancel`, the time limit, preemption — fails alone with
one line naming the scheduler's state; its dir keeps the epochs saved so far and the
same command continues it. Needs hydra-submitit-launcher's submitit (the `launchers`
extra); without it the launcher says so in one line.
"""

import logging
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

from hydra_plugins.fashionbn_batched_launcher.batched_launcher import (
    BatchedLauncher,
    BatchedLauncherConf,
    LauncherSettingError,
    pending_returns,
    settle_returns,
)

log = logging.getLogger(__name__)


@dataclass
class BatchedSlurmLauncherConf(BatchedLauncherConf):
    """batched's keys — max_cohort here: runs per cluster job (one cohort) at most;
    null: what the CPU cache rule gives for device=cpu (on the submitting machine:
    set it where the nodes differ), every run that can share a program for
    cuda/auto (the node splits them by its memory) — and the SLURM ones."""

    _target_: str = (
        "hydra_plugins.fashionbn_slurm_launcher.batched_slurm.BatchedSlurmLauncher"
    )
    # the scheduler's files of each cluster job (its stderr holds the cohort's lines)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    partition: Optional[str] = None  # null: the cluster's default partition
    timeout_min: int = 60  # wall-time limit of one cluster job (a whole cohort)
    cpus_per_task: int = 2  # cores per cluster job; threads=null uses them all
    gpus_per_node: int = 0  # 1 with device=cuda (or device=auto)
    mem_gb: int = 4  # the dataset in memory ~0.25 GB, plus the cohort's runs
    array_parallelism: int = 64  # cluster jobs at once
    setup: list[str] = field(default_factory=list)  # shell lines before the job
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # sbatch's


ConfigStore.instance().store(
    group="hydra/launcher",
    name="batched_slurm",
    node=BatchedSlurmLauncherConf,
    provider="fashionbn",
)


class BatchedSlurmLauncher(BatchedLauncher):
    def __init__(
        self,
        max_cohort: Optional[int] = None,
        compose_once: bool = True,
        submitit_folder: str = ".submitit/%j",
        partition: Optional[str] = None,
        timeout_min: int = 60,
        cpus_per_task: int = 2,
        gpus_per_node: int = 0,
        mem_gb: int = 4,
        array_parallelism: int = 64,
        setup: Optional[list] = None,
        additional_parameters: Optional[dict] = None,
    ) -> None:
        super().__init__(max_cohort, compose_once)
        self.folder = submitit_folder
        self.timeout_min = timeout_min
        self.parameters: dict[str, Any] = {
            "name": "fashionbn-cohort",
            "timeout_min": timeout_min,
            "cpus_per_task": cpus_per_task,
            "gpus_per_node": gpus_per_node,
            "mem_gb": mem_gb,
            "slurm_array_parallelism": array_parallelism,
            "slurm_setup": list(setup or []),
            "slurm_additional_parameters": dict(additional_parameters or {}),
        }
        if partition is not None:
            self.parameters["slurm_partition"] = partition

    def settings_problem(self) -> Optional[str]:
        """batched's, then SLURM's (checked at set-up: nothing is written first)."""
        from .slurm_launcher import settings_problem

        return super().settings_problem() or settings_problem(
            self.timeout_min, self.folder
        )

    def train(self, runs: list[JobReturn]) -> None:
        """Send the sweep's cohorts to SLURM, wait for them, and settle each job's
        JobReturn from what its cluster job sent back."""
        from fashionbn.jobs.cluster import Stopped, finished_here

        from .slurm_launcher import ADVICE, ended_message

        pending = pending_returns(runs)
        digests: dict = {}  # (a finished run needs no cluster job to say so)
        sending = [ret for ret in pending if not finished_here(ret.return_value,
                                                                digests)]  # fmt: skip
        if not sending:
            settle_returns(pending)
            return
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise LauncherSettingError(
                "error: hydra/launcher=batched_slurm needs submitit: pip install -e "
                '".[launchers]"'
            ) from None
        overrides = {id(ret.return_value): ret.overrides or [] for ret in pending}

        def describe(job, stopped: Stopped) -> str:
            """The line of a job whose cluster job ended before it finished."""
            state = stopped.state
            if (state.split() or [""])[0] not in ADVICE:
                state = f"{state or 'UNKNOWN'} (stopped by {stopped.signal})"
            return ended_message(job.job_num, overrides[id(job)], state,
                                 self.timeout_min,
                                 f" (cluster job {stopped.cluster_job})")  # fmt: skip

        train_on_cluster([ret.return_value for ret in sending], self.max_cohort,
                         self.folder, self.parameters, describe)  # fmt: skip
        settle_returns(pending)


def train_on_cluster(
    jobs: list,
    max_cohort: Optional[int],
    folder: str,
    parameters: dict,
    describe: Callable[[Any, Any], str],
) -> None:
    """Each cohort of `jobs` as one SLURM job, turn by turn; each job's `result` is
    set from what its cluster job sent back: a job the scheduler ended first gets
    a FashionbnError with `describe`'s line, a skipped one (another process trains
    its dir) None; each such job's line is logged as its cluster job ends."""
    import submitit
    from submitit.core.utils import FailedJobError

    from fashionbn.analysis.markdown import plural
    from fashionbn.config import FashionbnError
    from fashionbn.jobs.cluster import SKIPPED, Stopped, cohort_jobs, train_cohort_job
    from fashionbn.jobs.reading import being_trained
    from fashionbn.jobs.scheduler import ask_squeue_without_accounting

    from .slurm_launcher import SubmissionRefused, refused_line, still_on

    ask_squeue_without_accounting()
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**parameters)
    for turn in cohort_jobs(jobs, max_cohort):
        try:
            submitted = executor.map_array(train_cohort_job, turn,
                                           [max_cohort] * len(turn))  # fmt: skip
        except FailedJobError as err:  # sbatch refused: nothing was submitted
            raise SubmissionRefused(refused_line(err)) from None
        for members, cluster_job in zip(turn, submitted):
            log.info("cluster job %s: %s (%s)", cluster_job.job_id,
                     plural(len(members), "run"),
                     ", ".join(job.name for job in members))  # fmt: skip
        try:
            for members, cluster_job in zip(turn, submitted):
                results = sent_back(cluster_job, len(members))
                done = skipped = 0
                for job, result in zip(members, results):
                    if isinstance(result, Stopped):
                        result = FashionbnError(describe(job, result))
                    if isinstance(result, BaseException):
                        log.error("%s: error: %s", job.name, result)
                    elif result == SKIPPED:
                        skipped, result = skipped + 1, None
                        who = being_trained(job.out_dir) or "another process"
                        log.warning("%s: skipped: its dir is being trained by %s; "
                                    "run the same command again once that has "
                                    "ended", job.name, who)  # fmt: skip
                    else:
                        done += 1
                    job.result = result
                where = cluster_job.paths.stderr
                log.info("cluster job %s ended: %d of %s done%s%s",
                         cluster_job.job_id, done, plural(len(members), "run"),
                         f", {skipped} skipped" if skipped else "",
                         f" (its log: {where})" if where.exists() else "")  # fmt: skip
        except KeyboardInterrupt:
            still_on(submitted)
            raise


def sent_back(cluster_job, count: int) -> list:
    """The results a cluster job of `count` jobs sent back, once it has ended, with
    the scheduler's state in each Stopped. A job requeued after it stopped
    (preemption, `scontrol requeue`) is waited for again: it runs the same cohort,
    which resumes. One that can never start (its request does not fit the
    partition) is cancelled, its jobs Stopped with the scheduler's reason."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from fashionbn.jobs.cluster import Stopped

    requeued = False
    while True:
        reason = wait_for(cluster_job, by_state=requeued)
        if reason is not None:
            return [Stopped("scancel", f"PENDING ({reason})", cluster_job.job_id)
                    ] * count  # fmt: skip
        try:
            results = cluster_job.result()
        except UncompletedJobError:  # killed before it could answer
            results = [Stopped("SIGKILL")] * count
        except FailedJobError as err:  # not a job's failure: a bug
            last = str(err).strip().splitlines()[-1]
            return [RuntimeError(
                f"cluster job {cluster_job.job_id} failed: {last} (its log: "
                f"{cluster_job.paths.stderr})"
            )] * count  # fmt: skip
        if not any(isinstance(result, Stopped) for result in results):
            return results
        state = scheduler_state(cluster_job)
        if state.split()[0] not in STILL_ON:
            return [Stopped(r.signal, state, cluster_job.job_id)
                    if isinstance(r, Stopped) else r for r in results]  # fmt: skip
        log.info("cluster job %s was requeued (the scheduler says %s): waiting for "
                 "it again", cluster_job.job_id, state)  # fmt: skip
        requeued = True  # its results file is the last run's until it ends again


# why a pending job can never start: its request does not fit the partition
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
                "BadConstraints", "InvalidAccount", "InvalidQOS")  # fmt: skip


def wait_for(cluster_job, by_state: bool = False) -> Optional[str]:
    """Wait until the cluster job has ended (`by_state`: until the scheduler says
    so, not its results file); if the scheduler holds it for a reason that never
    passes, cancel it and return the reason."""
    while not (ended(cluster_job) if by_state else cluster_job.done()):
        try:
            reason = subprocess.run(
                ["squeue", "-h", "-t", "PENDING", "-o", "%r", "-j",
                 str(cluster_job.job_id)],
                capture_output=True, text=True, timeout=60,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            reason = ""
        if reason in NEVER_STARTS:
            subprocess.run(["scancel", str(cluster_job.job_id)], check=False)
            return reason
        time.sleep(POLL_S)
    return None


POLL_S = 5.0  # seconds between two questions to the scheduler while waiting


def ended(cluster_job) -> bool:
    """Whether the scheduler says the cluster job has ended."""
    try:
        state = cluster_job.get_info(mode="force").get("State") or "UNKNOWN"
    except Exception:  # noqa: BLE001 - asked again later
        return False
    return state.split()[0] not in STILL_ON


SETTLE_S = 60.0  # how long a stopped job's state may say it still runs


def scheduler_state(cluster_job) -> str:
    """What the scheduler says of a cluster job that has ended (CANCELLED, TIMEOUT,
    ...): a job stopped by SIGTERM sends its results back before the scheduler has
    marked it, so it is asked again, up to SETTLE_S, while it says it runs."""
    deadline = time.monotonic() + SETTLE_S
    state = "UNKNOWN"
    while True:
        try:
            state = cluster_job.get_info(mode="force").get("State") or "UNKNOWN"
        except Exception:  # noqa: BLE001 - only for the message
            return state
        if state.split()[0] not in SETTLING or time.monotonic() > deadline:
            return state
        time.sleep(1.0)


# the states of a job the scheduler has not finished with
STILL_ON = ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING", "REQUEUED",
            "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
            "SIGNALING", "STAGE_OUT")  # fmt: skip
# of those, the states of a job whose process has ended but the scheduler has not
# yet marked it (any other means it was requeued)
SETTLING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT")
