"""hydra/launcher=batched: every job of a fashionbn sweep set up as Hydra's basic
launcher sets it up, then the jobs that can share one program trained at once
(fashionbn.jobs.cohort). Any other Hydra app is launched exactly as by the basic
launcher, so this is a conformant Hydra launcher (Hydra's LauncherTestSuite runs it).
"""

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.errors import CompactHydraException
from omegaconf import open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = (
        "hydra_plugins.fashionbn_batched_launcher.batched_launcher.BatchedLauncher"
    )
    # runs per cohort at most; null: all of a cohort on the CPU, and as many as half
    # the free memory holds on CUDA
    max_cohort: Optional[int] = None


ConfigStore.instance().store(
    group="hydra/launcher",
    name="batched",
    node=BatchedLauncherConf,
    provider="fashionbn",
)


@contextmanager
def stderr_logging(name: str) -> Iterator[None]:
    """Within the block, `name`'s records go to stderr in Hydra's job format, not
    through the launcher's own logging (stdout)."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    before = (logger.propagate, logger.level)
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = before


class LauncherSettingError(CompactHydraException):
    """A hydra.launcher.* value this launcher cannot work with (one line)."""


def max_cohort_problem(value: object) -> Optional[str]:
    """Why hydra.launcher.max_cohort cannot be used, or None (an int >= 1, or null
    for as many runs as fit)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)
                         and value >= 1):  # fmt: skip
        return None
    return (
        f"error: hydra.launcher.max_cohort={value}: must be >= 1 (runs per cohort at "
        "most) or null (as many as fit: all on the CPU, as many as half the free "
        "memory holds on CUDA)"
    )


class BatchedLauncher(BasicLauncher):
    def __init__(self, max_cohort: Optional[int] = None) -> None:
        super().__init__()
        self.max_cohort = max_cohort

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        join = getattr(self.task_function, "fashionbn_cohort", None)
        if join is None:  # not fashionbn: the basic launcher's behaviour
            return super().launch(job_overrides, initial_job_idx)
        problem = max_cohort_problem(self.max_cohort)
        if problem:  # before anything is set up or written
            raise LauncherSettingError(problem)
        from fashionbn.config import FashionbnError
        from fashionbn.jobs.cohort import PendingJob, run_cohorts
        from fashionbn.run import JobFailed

        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Setting up {len(job_overrides)} jobs to train in cohorts")
        runs = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            try:
                ret = run_job(
                    hydra_context=self.hydra_context,
                    task_function=join,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            except Exception as err:  # Hydra could not set the job up (its dir):
                # that job fails, the others go on, as a job's own failure does
                ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
                ret._return_value = JobFailed(
                    f"error: job #{idx} could not be set up ({type(err).__name__}: "
                    f"{err})"
                )
                log.error("%s", ret._return_value)
            runs.append(ret)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        pending = [
            r._return_value
            for r in runs
            if r.status == JobStatus.COMPLETED
            and isinstance(r._return_value, PendingJob)
        ]
        with stderr_logging("fashionbn"):  # as a job logs (stdout stays clean)
            run_cohorts(pending, self.max_cohort)
        for ret in runs:
            job = ret._return_value
            if ret.status != JobStatus.COMPLETED or not isinstance(job, PendingJob):
                continue  # failed while set up
            if isinstance(job.result, FashionbnError):  # one line, as the others
                ret.status = JobStatus.FAILED
                ret._return_value = JobFailed(f"error: {job.result}")
            elif isinstance(job.result, BaseException):
                ret.status = JobStatus.FAILED
                ret._return_value = job.result
            else:
                ret._return_value = job.result
        return runs
