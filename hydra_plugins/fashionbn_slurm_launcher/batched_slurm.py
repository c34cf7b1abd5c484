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
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

from hydra_plugins.fashionbn_batched_launcher.batched_launcher import (
    BatchedLauncher,
    LauncherSettingError,
    pending_returns,
    settle_returns,
)

log = logging.getLogger(__name__)


@dataclass
class BatchedSlurmLauncherConf:
    _target_: str = (
        "hydra_plugins.fashionbn_slurm_launcher.batched_slurm.BatchedSlurmLauncher"
    )
    # runs per cluster job (one cohort) at most; null: what the CPU cache rule gives
    # for device=cpu (on the submitting machine: set it where the nodes differ), every
    # run that can share a program for cuda/auto (the node splits them by its memory)
    max_cohort: Optional[int] = None
    # jobs that choose the same config groups share one composition (as batched)
    compose_once: bool = True
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

    def train(self, runs: list[JobReturn]) -> None:
        """Send the sweep's cohorts to SLURM, wait for them, and settle each job's
        JobReturn from what its cluster job sent back."""
        from fashionbn.config import FashionbnError
        from fashionbn.jobs.cluster import Stopped

        from .slurm_launcher import ADVICE, ended_message

        pending = pending_returns(runs)
        if not pending:
            return
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise LauncherSettingError(
                "error: hydra/launcher=batched_slurm needs submitit: pip install -e "
                '".[launchers]"'
            ) from None
        train_on_cluster([ret.return_value for ret in pending], self.max_cohort,
                         self.folder, self.parameters)  # fmt: skip
        for ret in pending:
            job = ret.return_value
            stopped = job.result
            if isinstance(stopped, Stopped):
                state = stopped.state
                if (state.split() or [""])[0] not in ADVICE:
                    state = f"{state or 'UNKNOWN'} (stopped by {stopped.signal})"
                job.result = FashionbnError(ended_message(
                    job.job_num, ret.overrides or [], state, self.timeout_min,
                    f" (cluster job {stopped.cluster_job})",
                ))  # fmt: skip
        settle_returns(pending)


def train_on_cluster(
    jobs: list, max_cohort: Optional[int], folder: str, parameters: dict
) -> None:
    """Each cohort of `jobs` as one SLURM job, turn by turn; each job's `result` is
    set from what its cluster job sent back (Stopped, with the cluster job's id and
    state, where the scheduler ended it first)."""
    import submitit
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from fashionbn.jobs.cluster import Stopped, cohort_jobs, train_cohort_job
    from fashionbn.jobs.scheduler import ask_squeue_without_accounting

    ask_squeue_without_accounting()
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**parameters)
    for turn in cohort_jobs(jobs, max_cohort):
        submitted = executor.map_array(train_cohort_job, turn,
                                       [max_cohort] * len(turn))  # fmt: skip
        for members, cluster_job in zip(turn, submitted):
            log.info("cluster job %s: %d runs (%s)", cluster_job.job_id,
                     len(members), ", ".join(job.name for job in members))  # fmt: skip
        try:
            for members, cluster_job in zip(turn, submitted):
                try:
                    results = cluster_job.result()
                except UncompletedJobError:  # killed before it could answer
                    results = [Stopped("SIGKILL")] * len(members)
                except FailedJobError as err:  # not a job's failure: a bug
                    last = str(err).strip().splitlines()[-1]
                    results = [RuntimeError(
                        f"cluster job {cluster_job.job_id} failed: {last} (its log: "
                        f"{cluster_job.paths.stderr})"
                    )] * len(members)  # fmt: skip
                for job, result in zip(members, results):
                    if isinstance(result, Stopped):
                        result = Stopped(result.signal, scheduler_state(cluster_job),
                                         cluster_job.job_id)  # fmt: skip
                    job.result = result
                failed = sum(isinstance(job.result, BaseException | Stopped)
                             for job in members)  # fmt: skip
                log.info("cluster job %s ended: %d of %d runs done (its log: %s)",
                         cluster_job.job_id, len(members) - failed, len(members),
                         cluster_job.paths.stderr)  # fmt: skip
        except KeyboardInterrupt:
            ids = " ".join(job.job_id for job in submitted)
            log.warning("the cluster jobs go on: `scancel %s` stops them (their "
                        "finished epochs are saved)", ids)  # fmt: skip
            raise


def scheduler_state(cluster_job, wait_s: float = 60.0) -> str:
    """What the scheduler says of a cluster job that has ended (CANCELLED, TIMEOUT,
    ...): a job stopped by SIGTERM sends its results back before the scheduler has
    marked it, so it is asked again, up to `wait_s`, while it says it runs."""
    deadline = time.monotonic() + wait_s
    state = "UNKNOWN"
    while True:
        try:
            state = cluster_job.get_info(mode="force").get("State") or "UNKNOWN"
        except Exception:  # noqa: BLE001 - only for the message
            return state
        if state.split()[0] not in STILL_ON or time.monotonic() > deadline:
            return state
        time.sleep(1.0)


# the states of a job the scheduler has not finished with
STILL_ON = ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING", "REQUEUED",
            "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")  # fmt: skip
