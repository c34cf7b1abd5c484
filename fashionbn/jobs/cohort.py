"""A sweep's jobs trained in cohorts (hydra/launcher=batched): every job keeps its own
job dir and the single-run path's rules (lock, skip, resume, refuse, files after
every epoch), while the jobs that can share one program train at once
(fashionbn.core.batched).

The launcher first sets every job up as Hydra's own launchers do (its dir, `.hydra/`,
its identity) and collects a PendingJob for each; `run_cohorts` then groups them by
what must be equal (fashionbn.core.batched.cohort_key, the device, the epochs already
done) and trains each group.
"""

import logging
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from fashionbn.config import FashionbnError
from fashionbn.config.validation import check_config
from fashionbn.core.batched import cohort_key, train_cohort
from fashionbn.core.data import data_digest
from fashionbn.core.train import (
    checked_data,
    divergence_message,
    epoch_summary,
    global_rng_state,
    resolve_device,
    restore_training,
    start_training,
    torch_threads,
)
from fashionbn.jobs.files import FAILED
from fashionbn.jobs.job import (
    JobBusy,
    JobFiles,
    job_lock,
    run_identity,
    with_execution,
)
from fashionbn.jobs.loggers import make_loggers
from fashionbn.jobs.resume import DONE, FRESH, RESUME, prepare_job_dir

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's


@dataclass
class PendingJob:
    """A job set up by the launcher, waiting for its cohort."""

    cfg: Any
    out_dir: Path
    log_root: Path
    name: str
    job_num: int
    result: Any = None  # test_acc, None (skipped as busy), or the exception
    # set while it trains
    files: Optional[JobFiles] = None
    records: list = field(default_factory=list)
    training: Any = None
    rng: Optional[dict] = None
    loggers: Any = None
    file_log: Optional[logging.Handler] = None


def run_cohorts(jobs: list[PendingJob], max_cohort: Optional[int] = None) -> None:
    """Train every pending job, in cohorts of at most `max_cohort` runs (None: as
    many as memory allows); each job's `result` is set."""
    groups: dict[tuple, list[PendingJob]] = defaultdict(list)
    for job in jobs:
        try:
            check_config(job.cfg)
            device = resolve_device(job.cfg.device, batched=True)
        except FashionbnError as err:
            job.result = err
            continue
        # where the data is read from is no part of a run's identity, but one cohort
        # trains on one copy of it: jobs pointed at different copies train apart
        where = (str(job.cfg.data.root), str(job.cfg.data.system_dir))
        groups[(str(device), where, cohort_key(run_identity(job.cfg)))].append(job)
    for (device, _, _), members in groups.items():
        limit = max_cohort or cohort_limit(members[0].cfg, torch.device(device))
        for start in range(0, len(members), limit):
            train_group(members[start : start + limit], torch.device(device))


def cohort_limit(cfg, device: torch.device) -> int:
    """Runs per cohort: all on the CPU; on CUDA as many as half the free memory
    holds, at a generous estimate per run (weights, gradients, momentum and the
    activations of a batch, four times over)."""
    if device.type != "cuda":
        return 1_000_000
    free, _ = torch.cuda.mem_get_info(device)
    widths = [28 * 28, *cfg.model.hidden, 10]
    weights = sum(a * b + b for a, b in zip(widths, widths[1:]))
    per_run = 4 * 4 * (3 * weights + cfg.batch_size * sum(widths) * 4)
    return max(1, int(free * 0.5 // per_run))


def train_group(jobs: list[PendingJob], device: torch.device) -> None:
    """One cohort: lock every job's dir, settle what each holds, train the rest."""
    cfg = jobs[0].cfg
    with torch_threads(cfg.threads), ExitStack() as locks:
        ready = []
        for job in jobs:
            try:
                locks.enter_context(job_lock(job.out_dir))
            except JobBusy as busy:
                log.warning("%s", busy)
                continue  # result None: skipped, as the other launchers do
            try:
                if settle(job, device):
                    ready.append(job)
            except FashionbnError as err:
                log.error("error: %s: %s", job.out_dir.name, err)
                job.result = err
        if not ready:
            return
        try:
            data = checked_data(cfg, None, device)
        except FashionbnError as err:
            for job in ready:
                job.result = err
            return
        by_epoch: dict[int, list[PendingJob]] = defaultdict(list)
        for job in ready:
            job.files.data_sha256 = data_digest(job.cfg.data)
            by_epoch[len(job.records)].append(job)
        for members in by_epoch.values():
            train_members(members, data, device)


def settle(job: PendingJob, device: torch.device) -> bool:
    """prepare_job_dir for one job: False when it is finished (result set), True
    when it is to be trained (from epoch 1 or its checkpoint)."""
    cfg = job.cfg
    identity = run_identity(cfg)
    previous = prepare_job_dir(job.out_dir, identity, cfg.force, cfg.get("extend"))
    if previous.action == DONE:
        log.info("%s is %s already; skipping it", job.out_dir.name, previous.status)
        job.result = previous.records[-1]["test_acc"]
        return False
    execution = with_execution(previous, device, {"launcher": "batched"})
    job.files = JobFiles(job.out_dir, identity, execution)
    job.files.extensions = previous.extensions
    job.records = list(previous.records)
    job.training = start_training(cfg, device)
    if previous.action == RESUME:
        restore_training(job.training, previous.state)
        log.info("resuming %s after epoch %d", job.out_dir.name, len(job.records))
    job.rng = global_rng_state()  # this run's, as the single-run path leaves them
    job.loggers = make_loggers(
        cfg.logger, job.out_dir, job.log_root, identity, execution[-1],
        previous.action == FRESH, job.name,
    )  # fmt: skip
    job.file_log = logging.FileHandler(job.out_dir / "run.log")
    job.file_log.setFormatter(logging.Formatter(LOG_FORMAT))
    return True


def train_members(jobs: list[PendingJob], data, device: torch.device) -> None:
    """Train jobs that stand at the same epoch as one cohort, writing each job's
    files after every epoch; a failure fails the jobs still training."""
    log.info(
        "a cohort of %d runs on %s from epoch %d: %s", len(jobs), device,
        len(jobs[0].records) + 1, ", ".join(job.name for job in jobs),
    )  # fmt: skip
    for job in jobs:
        job.files.execution[-1]["cohort"] = len(jobs)  # the runs trained together
        job.files.start(job.records)
        if job.loggers is not None:
            job.loggers.log(job.records, [])

    def on_epoch(k: int, records: list[dict], diverged: bool) -> None:
        job = jobs[k]
        job.files.save_epoch(job.training, records, diverged, job.cfg.epochs, job.rng)
        if job.loggers is not None:
            job.loggers.log(records, [])
        summary = epoch_summary(records[-1], job.cfg.epochs)
        job_log(job, logging.INFO, f"{summary}  (in a cohort of {len(jobs)})")
        if diverged:
            message = divergence_message(records[-1], job.cfg.divergence_loss)
            job_log(job, logging.WARNING, message)

    try:
        statuses = train_cohort(
            [job.cfg for job in jobs], [job.training for job in jobs], data,
            [job.records for job in jobs], on_epoch, device.type == "cpu",
        )  # fmt: skip
    except Exception as err:  # the finished epochs stay; a re-run continues
        for job in jobs:
            job.files.fail(err, not job.records)
            if job.loggers is not None:
                job.loggers.finish(FAILED, job.out_dir)
            job.result = err
            job.file_log.close()
        return
    for job, status in zip(jobs, statuses):
        if job.loggers is not None:
            job.loggers.finish(status, job.out_dir)
        job.result = job.records[-1]["test_acc"]
        job.file_log.close()


def job_log(job: PendingJob, level: int, message: str) -> None:
    """A line in the job's own run.log (and the console)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    job.file_log.handle(record)
    log.log(level, "%s: %s", job.name, message)
