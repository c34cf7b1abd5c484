"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml's `_target_`; Hydra takes
launchers from the hydra_plugins package only): hydra-submitit-launcher's SLURM
launcher, with what the scheduler did to a job said as that job's failure. A job the
scheduler ended before it finished — `scancel`, its time limit, preemption, a node
failure — fails alone with one line naming its state and what to do (its dir keeps
every epoch saved so far; the same command continues it), where submitit would raise
for the first such job and lose the others' results in a traceback. It also makes
submitit ask squeue where sacct does not answer (fashionbn.jobs.scheduler)."""

import logging
import signal
from typing import Any, Optional, Sequence
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException

from fashionbn.jobs.launching import JobFailed
from fashionbn.jobs.scheduler import ask_squeue_without_accounting

ADVICE = {
    "TIMEOUT": "it ran past hydra.launcher.timeout_min={timeout}: raise it",
    "CANCELLED": "it was cancelled (scancel)",
    "PREEMPTED": "it was preempted",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "it ran out of memory: raise hydra.launcher.mem_gb",
    "PENDING": "it could never start ({state}: its request does not fit the "
    "partition: hydra.launcher.partition, cpus_per_task, gpus_per_node, mem_gb, "
    "timeout_min), so it was cancelled",
    "COMPLETED": "its node had SIGTERM, though the scheduler did not end it (e.g. "
    "scancel --signal=TERM)",
    "FAILED": "it failed outside training (a hydra.launcher.setup line, the node's "
    "environment, a signal): its log under hydra.launcher.submitit_folder says why",
}


def settings_problem(timeout_min: Any, folder: str) -> Optional[str]:
    """Why these hydra.launcher values cannot work on SLURM, or None."""
    if not isinstance(timeout_min, int) or isinstance(timeout_min, bool) or (
        timeout_min < 1
    ):  # fmt: skip
        return (
            f"error: hydra.launcher.timeout_min={timeout_min}: must be >= 1 (minutes "
            "per cluster job; SLURM reads 0 as no limit at all)"
        )
    if "%" in str(folder).replace("%j", ""):
        return (
            f"error: hydra.launcher.submitit_folder={folder}: sbatch expands '%' in "
            "its log paths (%u, %x, ...): choose a hydra.sweep.dir without '%'"
        )
    return None


def ended_line(index: int, overrides: Sequence[str], state: str, timeout: Any) -> str:
    """The one line of a job the scheduler ended before it finished."""
    return f"error: {ended_message(index, overrides, state, timeout)}"


def ended_message(
    index: int, overrides: Sequence[str], state: str, timeout: Any, where: str = ""
) -> str:
    """ended_line without its `error: ` (`where`: which cluster job it ran in)."""
    word = state.split()[0] if state else "UNKNOWN"
    why = (
        ADVICE[word].format(timeout=timeout, state=state)
        if word in ADVICE
        else f"the scheduler says {state or 'nothing'}"
    )
    return (
        f"job #{index} ({' '.join(filter_overrides(overrides))}) ended on the "
        f"scheduler{where} as {word} before it finished; {why}. Its dir keeps the "
        "epochs saved so far: run the same command again to continue from there"
    )


class SubmissionRefused(CompactHydraException):
    """sbatch refused the sweep's jobs (one line)."""


def refused_line(err: Exception) -> str:
    """sbatch's own complaint, as one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = next((line for line in lines if "error" in line.lower()),
                lines[-1] if lines else "")  # fmt: skip
    return (
        f"error: sbatch refused the jobs: {said} (see hydra.launcher.*: "
        "partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min)"
    )


def still_on(cluster_jobs: Sequence) -> None:
    """On Ctrl-C in the submitting process: say that the cluster jobs go on, and
    how to stop them."""
    if cluster_jobs:
        ids = " ".join(str(job.job_id) for job in cluster_jobs)
        logging.getLogger(__name__).warning(
            "the cluster jobs go on training: `scancel %s` stops them (their finished "
            "epochs are saved); the same command run while they train skips their "
            "jobs", ids,
        )  # fmt: skip


class Outcome:
    """A submitted job whose results() is its JobReturn, or, when the scheduler
    ended it before it finished, a failed one with its line."""

    def __init__(self, job, index: int, overrides: Sequence[str], timeout: Any):
        self.job, self.index, self.overrides, self.timeout = (
            job,
            index,
            overrides,
            timeout,
        )

    def results(self) -> list:
        from submitit.core.utils import UncompletedJobError

        try:
            return self.job.results()
        except UncompletedJobError:
            try:
                state = str(self.job.state)
            except Exception:  # noqa: BLE001 - the state is only for the message
                state = "UNKNOWN"
            ret = JobReturn(overrides=list(self.overrides), status=JobStatus.FAILED)
            ret.return_value = JobFailed(
                ended_line(self.index, self.overrides, state, self.timeout)
            )
            return [ret]


try:  # hydra-submitit-launcher comes with the `launchers` extra
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as SubmititSlurmLauncher,
    )
except ImportError:  # without it there is no SLURM launcher (nor a warning from
    SubmititSlurmLauncher = None  # Hydra's plugin scan, which imports this module)

if SubmititSlurmLauncher is not None:

    class SlurmLauncher(SubmititSlurmLauncher):
        def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
            """One job on its node; SIGTERM (scancel, the time limit, preemption)
            stops it as Ctrl-C stops a local job, its finished epochs saved
            (submitit's own handler ignores SIGTERM: the job would train on until
            KillWait's SIGKILL, and might even finish a cancelled run)."""
            from fashionbn.jobs.cluster import interrupt

            signal.signal(signal.SIGTERM, interrupt)
            try:
                return super().__call__(*args, **kwargs)
            except KeyboardInterrupt as stop:
                logging.getLogger("fashionbn").warning(
                    "stopped by %s: finished epochs are saved; the same command "
                    "continues them", stop or "SIGINT",
                )  # fmt: skip
                raise

        def setup(self, **kwargs: Any) -> None:
            """The settings checked first: before the sweeper writes anything (its
            multirun.yaml) and before any job is set up or submitted."""
            if problem := settings_problem(
                self.params.get("timeout_min"), self.params.get("submitit_folder", "")
            ):  # fmt: skip
                raise SubmissionRefused(problem)
            super().setup(**kwargs)

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            import submitit

            timeout = self.params.get("timeout_min")
            ask_squeue_without_accounting()
            submit = submitit.AutoExecutor.map_array

            submitted: list = []

            def map_array(executor, function, *iterables):
                try:
                    jobs = submit(executor, function, *iterables)
                except submitit.core.utils.FailedJobError as err:
                    raise SubmissionRefused(refused_line(err)) from None
                submitted.extend(jobs)
                return [
                    Outcome(job, initial_job_idx + k, job_overrides[k], timeout)
                    for k, job in enumerate(jobs)
                ]

            with mock.patch.object(submitit.AutoExecutor, "map_array", map_array):
                try:
                    return super().launch(job_overrides, initial_job_idx)
                except KeyboardInterrupt:
                    still_on(submitted)
                    raise
