"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml's `_target_`; Hydra takes
launchers from the hydra_plugins package only): hydra-submitit-launcher's SLURM
launcher, with what the scheduler did to a job said as that job's failure. A job the
scheduler ended before it finished — `scancel`, its time limit, preemption, a node
failure — fails alone with one line naming its state and what to do (its dir keeps
every epoch saved so far; the same command continues it), where submitit would raise
for the first such job and lose the others' results in a traceback. It also makes
submitit ask squeue where sacct does not answer (fashionbn.jobs.scheduler)."""

from typing import Any, Sequence
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from fashionbn.jobs.launching import JobFailed
from fashionbn.jobs.scheduler import ask_squeue_without_accounting

ADVICE = {
    "TIMEOUT": "it ran past hydra.launcher.timeout_min={timeout}: raise it",
    "CANCELLED": "it was cancelled (scancel)",
    "PREEMPTED": "it was preempted",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "it ran out of memory: raise hydra.launcher.mem_gb",
}


def ended_line(index: int, overrides: Sequence[str], state: str, timeout: Any) -> str:
    """The one line of a job the scheduler ended before it finished."""
    return f"error: {ended_message(index, overrides, state, timeout)}"


def ended_message(
    index: int, overrides: Sequence[str], state: str, timeout: Any, where: str = ""
) -> str:
    """ended_line without its `error: ` (`where`: which cluster job it ran in)."""
    word = state.split()[0] if state else "UNKNOWN"
    why = ADVICE.get(word, f"the scheduler says {state or 'nothing'}")
    return (
        f"job #{index} ({' '.join(filter_overrides(overrides))}) ended on the "
        f"scheduler{where} as {word} before it finished; "
        f"{why.format(timeout=timeout)}. Its dir keeps the epochs saved so far: run "
        "the same command again to continue from there"
    )


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
        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            import submitit

            ask_squeue_without_accounting()
            submit = submitit.AutoExecutor.map_array
            timeout = self.params.get("timeout_min")

            def map_array(executor, function, *iterables):
                jobs = submit(executor, function, *iterables)
                return [
                    Outcome(job, initial_job_idx + k, job_overrides[k], timeout)
                    for k, job in enumerate(jobs)
                ]

            with mock.patch.object(submitit.AutoExecutor, "map_array", map_array):
                return super().launch(job_overrides, initial_job_idx)
