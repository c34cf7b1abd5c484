"""`python -m fashionbn.run [-m] [overrides]`: train one configuration per job."""

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fashionbn.config import (
    ConfigError,
    FashionbnError,
    excluded_from_dirname,
    register_configs,
)
from fashionbn.config.settings import run_settings
from fashionbn.config.validation import available_cores, missing_line
from fashionbn.jobs.files import METRICS_FILE
from fashionbn.jobs.job import JobBusy, run_job
from fashionbn.jobs.launching import JobFailed, deferring, sweep_memo
from fashionbn.jobs.progress import run_name, sweep_line

if TYPE_CHECKING:
    from fashionbn.jobs.cohort import PendingJob

log = logging.getLogger(__name__)

register_configs()


def threads_per_job(launcher_cfg: DictConfig) -> Optional[int]:
    """Torch threads for one job, so that parallel jobs share the cores, not fight.

    joblib (hydra/launcher=local_parallel): cores // n_jobs; submitit (slurm): the
    job's cpus_per_task; the basic launcher runs one job at a time: None (all cores).
    """
    n_jobs = launcher_cfg.get("n_jobs")
    if n_jobs is not None:
        cores = available_cores()
        return 1 if n_jobs < 0 else max(1, cores // n_jobs)
    return launcher_cfg.get("cpus_per_task")


def stop_when_orphaned(interval: float = 0.1) -> None:
    """In a joblib worker: exit at once when the sweep process that started it is
    gone (killed or stopped), so that no orphan keeps training and writing.

    Every file is written atomically, so exiting at any moment is safe; the job's
    next run continues from its last finished epoch.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval)
        os._exit(1)

    threading.Thread(target=watch, name="fashionbn-orphan-watch", daemon=True).start()


def named_overrides(hydra_cfg) -> list[str]:
    """The job's overrides that name its dir (Hydra's override_dirname's items)."""
    excluded = set(excluded_from_dirname(hydra_cfg.job.config.override_dirname))
    return [
        item
        for item in hydra_cfg.overrides.task
        if item.split("=", 1)[0].lstrip("+~") not in excluded
    ]


def preset_needs_multirun(hydra_cfg) -> Optional[str]:
    """The error for `experiment=<sweep preset>` without -m, or None."""
    params = hydra_cfg.sweeper.get("params") or {}
    if hydra_cfg.mode == RunMode.RUN and params:
        preset = hydra_cfg.runtime.choices.get("experiment")
        return (
            f"experiment={preset} is a sweep preset ({', '.join(params)}): run it "
            f"with -m, e.g. python -m fashionbn.run -m experiment={preset}"
        )
    return None


@dataclass
class JobPlace:
    """Where one job of this command runs and what it is called."""

    out_dir: Path
    log_root: Path  # what loggers share across a sweep (the MLflow store) lives here
    name: str  # the run's name in TensorBoard and MLflow
    single_run: bool
    job_num: int


def job_place(cfg: DictConfig) -> JobPlace:
    """Settle a job of the current Hydra job context: the data root made absolute,
    torch threads shared between parallel jobs, a preset run without -m refused."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    single_run = hydra_cfg.mode == RunMode.RUN
    # (read here; run_settings refuses any other value left missing)
    for node, key in ((cfg.data, "data.root"), (cfg, "threads")):
        if OmegaConf.is_missing(node, key.rsplit(".", 1)[-1]):
            raise ConfigError(missing_line(key))
    cfg.data.root = to_absolute_path(cfg.data.root)  # jobs may run from another cwd
    if cfg.threads is None:
        threads = threads_per_job(hydra_cfg.launcher)
        if threads is not None:
            torch.set_num_threads(threads)
    if "JoblibLauncher" in hydra_cfg.launcher.get("_target_", ""):
        stop_when_orphaned()
    problem = preset_needs_multirun(hydra_cfg)
    if problem:
        raise FashionbnError(problem)
    sweep_dir = Path(to_absolute_path(hydra_cfg.sweep.dir))
    return JobPlace(
        out_dir, out_dir if single_run else sweep_dir,
        run_name(named_overrides(hydra_cfg)) or out_dir.name, single_run,
        0 if single_run else hydra_cfg.job.num,
    )  # fmt: skip


def failed(err: FashionbnError, single_run: bool) -> JobFailed:
    """A problem with the input as one line: exit code 2 for a single run; in a sweep
    that job fails (the others still run)."""
    log.error("error: %s", err)
    if single_run:
        raise SystemExit(2) from None
    return JobFailed(f"error: {err}")


def train_job(cfg: DictConfig) -> Union[Optional[float], "PendingJob"]:
    """Train cfg's model into the job dir (or finish / skip it); return test_acc.

    A problem with the input (config values, dataset, a job dir that holds another
    config, is damaged, or a full disk) is logged as one line. A single run then ends
    with exit code 2; in a sweep that job fails, the others still run, and Hydra ends
    the sweep with that line and exit code 1. A job dir another process is training
    is skipped with one line. Under hydra/launcher=batched (deferring), the job is
    returned to the launcher to train in a cohort (join_cohort).
    """
    if deferring():
        return join_cohort(cfg)
    try:
        place = job_place(cfg)
        if not place.single_run and (line := sweep_line(place.job_num, False)):
            log.info("%s: %s", line, place.name)
        records = run_job(cfg, place.out_dir, log_root=place.log_root,
                          run_name=place.name)  # fmt: skip
    except JobBusy as busy:
        log.warning("%s", busy)
        return None
    except FashionbnError as err:
        raise failed(err, HydraConfig.get().mode == RunMode.RUN) from None
    if not place.single_run and (line := sweep_line(place.job_num, True)):
        log.info("%s", line)
    log.info("metrics in %s", place.out_dir / METRICS_FILE)
    return records[-1]["test_acc"]


def join_cohort(cfg: DictConfig):
    """Under hydra/launcher=batched, in each job's context: the job to train in a
    cohort, or through the single-run path after
    the cohorts when the batched path cannot train it (a PendingJob either way)."""
    from fashionbn.core.stacking import unsupported
    from fashionbn.jobs.cohort import PendingJob

    try:
        place = job_place(cfg)
        run = run_settings(cfg)  # resolved once, in the job's own context
    except FashionbnError as err:
        raise failed(err, False) from None
    return PendingJob(run, place.out_dir, place.log_root, place.name, place.job_num,
                      alone=unsupported(run, sweep_memo()))  # fmt: skip


main = hydra.main(version_base="1.3", config_path="../conf", config_name="config")(
    train_job
)


def interrupt(signum: int, frame) -> None:
    """SIGTERM -> KeyboardInterrupt, so a sweep stops its jobs as on Ctrl-C."""
    raise KeyboardInterrupt


def cli() -> int:
    """The command: main(), with SIGTERM/SIGINT stopping every job of the sweep."""
    signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except KeyboardInterrupt:
        print(
            "interrupted: finished epochs are saved; re-run the same command (same "
            "hydra.sweep.dir) to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
