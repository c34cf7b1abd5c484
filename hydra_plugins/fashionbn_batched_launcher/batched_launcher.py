"""hydra/launcher=batched: every job of a sweep set up as Hydra's basic launcher sets
it up (its dir, `.hydra/`, run in its own job context), then the fashionbn jobs that
can share one program trained at once (fashionbn.jobs.cohort).

Built on Hydra's public Launcher API: `setup` keeps what Hydra hands over, `launch`
runs each job's task function through hydra.core.utils.run_job (with compose_once,
the default: fashionbn.jobs.setting_up.run_job_lean, its equal without its copies)
inside fashionbn.jobs.launching.deferred_jobs, where a fashionbn job returns what it
would train (a PendingJob) instead of training; those are trained in cohorts and
their JobReturns completed. Any other Hydra app's jobs ignore the block and run one
after another as under the basic launcher, so this is a conformant Hydra launcher
(Hydra's LauncherTestSuite runs it).
"""

import gc
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

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
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = (
        "hydra_plugins.fashionbn_batched_launcher.batched_launcher.BatchedLauncher"
    )
    # runs per cohort at most; null: as many as the largest CPU cache holds on the
    # CPU (fashionbn/jobs/sizing.py), as many as half the free memory holds on CUDA,
    # in cohorts of even size
    max_cohort: Optional[int] = None
    # jobs that choose the same config groups share one composition, their values
    # applied as Hydra applies them (fashionbn.jobs.composing), and each job is
    # set up as Hydra's run_job sets it up without its copies
    # (fashionbn.jobs.setting_up); false: Hydra composes every job itself, twice
    # (the sweeper's check, then the launcher), and sets it up with run_job
    compose_once: bool = True


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
        "most) or null (as many as fit: what the CPU's largest cache holds, or half "
        "the free memory on CUDA)"
    )


class BatchedLauncher(Launcher):
    def __init__(
        self, max_cohort: Optional[int] = None, compose_once: bool = True
    ) -> None:
        self.max_cohort = max_cohort
        self.compose_once = compose_once
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.yaml_parts = None  # with compose_once: the jobs' `.hydra/` YAML, by parts

    def settings_problem(self) -> Optional[str]:
        """Why this launcher's hydra.launcher values cannot work, or None."""
        return max_cohort_problem(self.max_cohort)

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        problem = self.settings_problem()
        if problem:  # before the sweeper writes anything (its multirun.yaml)
            raise LauncherSettingError(problem)
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        from fashionbn.jobs.composing import compose_by_hydra, compose_once

        if self.compose_once:  # the sweeper's checks share it (one HydraContext)
            from fashionbn.jobs.setting_up import YamlParts

            compose_once(hydra_context).keep = True  # for `take`
            self.yaml_parts = YamlParts()
            gc.freeze()  # (see launch)
        else:  # (also where hydra/sweeper=fashionbn put one in)
            compose_by_hydra(hydra_context)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        # what a job's task imports, imported before any job: a Ctrl-C that lands
        # while a class is made is turned into a RuntimeError by Python 3.11, which
        # would fail that job and let the sweep go on
        import fashionbn.core.stacking  # noqa: F401
        import fashionbn.jobs.cohort  # noqa: F401
        from fashionbn.jobs.launching import deferred_jobs

        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Setting up {len(job_overrides)} jobs to train in cohorts")
        if self.yaml_parts is not None:
            # the objects alive before the sweep (torch's, Hydra's: ~200,000) left
            # out of the garbage collector's full passes while the jobs are set up
            # (each pass ~70 ms; a sweep of tiny jobs made several); the sweeper's
            # checks run after setup(), which froze them first
            gc.freeze()
        try:
            with deferred_jobs():
                runs = [
                    self._set_up(overrides, initial_job_idx + idx)
                    for idx, overrides in enumerate(job_overrides)
                ]
        finally:
            gc.unfreeze()
        self.train(runs)
        return runs

    def train(self, runs: list[JobReturn]) -> None:
        """Train the jobs set up to train in cohorts (here, in this process)."""
        train_pending(runs, self.max_cohort)

    def _set_up(self, overrides: Sequence[str], idx: int) -> JobReturn:
        """Run one job's task function in its job context, as the basic launcher
        does (a fashionbn job returns its PendingJob there)."""
        from fashionbn.jobs.launching import JobFailed

        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        loader = self.hydra_context.config_loader
        # with compose_once: the config the sweeper's check made (each job its own)
        take = getattr(loader, "take", loader.load_sweep_config)
        sweep_config = take(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        try:
            if self.yaml_parts is not None:  # compose_once: the same, cheaper
                from fashionbn.jobs.setting_up import run_job_lean

                ret = run_job_lean(
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                    hydra_context=self.hydra_context,
                    yaml_parts=self.yaml_parts,
                )
            else:
                ret = run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
        except Exception as err:  # Hydra could not set the job up (its dir):
            # that job fails, the others go on, as a job's own failure does
            failure = JobFailed(
                f"error: job #{idx} could not be set up ({type(err).__name__}: {err})"
            )
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            ret.return_value = failure  # (reading it back raises it: Hydra's rule)
            log.error("%s", failure)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


def train_pending(runs: list[JobReturn], max_cohort: Optional[int]) -> None:
    """Train the jobs that returned a PendingJob in cohorts; each JobReturn then
    holds the job's result, or its failure (a FashionbnError as one line)."""
    from fashionbn.jobs.cohort import run_cohorts

    pending = pending_returns(runs)
    if not pending:
        return
    with stderr_logging("fashionbn"):  # as a job logs (stdout stays clean)
        run_cohorts([ret.return_value for ret in pending], max_cohort)
    settle_returns(pending)


def pending_returns(runs: list[JobReturn]) -> list[JobReturn]:
    """The JobReturns of the jobs set up to train in cohorts."""
    from fashionbn.jobs.cohort import PendingJob

    return [
        ret
        for ret in runs
        if ret.status == JobStatus.COMPLETED
        and isinstance(ret.return_value, PendingJob)
    ]


def settle_returns(pending: list[JobReturn]) -> None:
    """Each JobReturn of a trained PendingJob holds its result, or its failure (a
    FashionbnError as one line, as the other launchers print it)."""
    from fashionbn.config import FashionbnError
    from fashionbn.jobs.launching import JobFailed

    for ret in pending:
        result = ret.return_value.result
        if isinstance(result, FashionbnError):  # one line, as the others
            ret.status, ret.return_value = (
                JobStatus.FAILED,
                JobFailed(f"error: {result}"),
            )
        elif isinstance(result, BaseException):
            ret.status, ret.return_value = JobStatus.FAILED, result
        else:
            ret.return_value = result
