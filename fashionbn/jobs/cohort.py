"""A sweep's jobs trained in cohorts (hydra/launcher=batched): every job keeps its own
job dir and the single-run path's rules (input checked first, lock, skip, resume,
refuse, files after every epoch, one `error:` line in the console and its run.log
when it fails), while the jobs that can share one program train at once
(fashionbn.core.batched).

The launcher first sets every job up as Hydra's own launchers do (its dir, `.hydra/`,
its identity) and collects a PendingJob for each; `run_cohorts` then groups them by
what must be equal (fashionbn.core.batched.cohort_key, the device, the data's copy,
the epochs already done) and trains each group. Jobs the batched path cannot train
(`PendingJob.alone`) run through the single-run path after the cohorts. Jobs sharing
one dir run in turns, as under the basic launcher: a later one finds what the earlier
one left. One job's failure, of any kind, fails that job only.
"""

import logging
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from fashionbn.config import FashionbnError
from fashionbn.config.settings import RunSettings
from fashionbn.core.atomic import durable_together
from fashionbn.core.batched import train_cohort
from fashionbn.core.data import data_digest
from fashionbn.core.records import STOPPED
from fashionbn.core.stacking import cohort_key
from fashionbn.core.train import (
    checked_data,
    divergence_message,
    epoch_summary,
    global_rng_state,
    resolve_device,
    torch_threads,
)
from fashionbn.jobs.job import (
    JobBusy,
    fail_job,
    job_lock,
    job_loggers,
    resumed_training,
    run_job,
    settle_job,
    steps_per_run_epoch,
)
from fashionbn.jobs.preflight import file_problem
from fashionbn.jobs.previous import FRESH, RESUME
from fashionbn.jobs.progress import CohortProgress, EpochBar
from fashionbn.jobs.sizing import cohort_size, split
from fashionbn.jobs.writer import JobFiles

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's


@dataclass
class PendingJob:
    """A job set up by the launcher, waiting for its cohort (its settings resolved in
    its own job context)."""

    run: RunSettings
    out_dir: Path
    log_root: Path
    name: str
    job_num: int
    alone: Optional[str] = None  # why it runs through the single-run path, if it does
    result: Any = None  # test_acc, None (skipped as busy), or the exception
    fresh: bool = False  # trained from epoch 1 (its loggers start new runs)
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
    progress = CohortProgress({id(job): job.run.epochs for job in jobs})
    try:
        for job in jobs:
            job.file_log = job_file_log(job.out_dir)
        for turn in turns(jobs):
            run_turn(turn, max_cohort, progress)
    finally:
        for job in jobs:
            if job.file_log is not None:
                job.file_log.close()


def turns(jobs: list[PendingJob]) -> list[list[PendingJob]]:
    """The jobs in turns in which no two share a dir (by its resolved path): the
    basic launcher runs them one after another, so a later job of a dir sees what
    an earlier one left there (a finished run of its config, or another config's)."""
    rounds: list[list[PendingJob]] = []
    seen: dict[Path, int] = defaultdict(int)
    for job in jobs:
        key = job.out_dir.resolve()
        if seen[key] == len(rounds):
            rounds.append([])
        rounds[seen[key]].append(job)
        seen[key] += 1
    return rounds


def run_turn(
    jobs: list[PendingJob], max_cohort: Optional[int], progress: "CohortProgress"
) -> None:
    """Group one turn's jobs into cohorts and train them; then the jobs that run
    alone, through the single-run path."""
    groups: dict[tuple, list[PendingJob]] = defaultdict(list)
    alone = []
    for job in jobs:
        if job.alone:
            alone.append(job)
            continue
        try:
            device = resolve_device(job.run.device, batched=True)
        except FashionbnError as err:
            job_failed(job, err, progress)
            continue
        # where the data is read from is no part of a run's identity, but one cohort
        # trains on one copy of it: jobs pointed at different copies train apart
        where = (str(job.run.data.root), str(job.run.data.system_dir))
        groups[(str(device), where, cohort_key(job.run.identity))].append(job)
    for (device, _, _), members in groups.items():
        limit = cohort_size(members[0].run, torch.device(device), max_cohort)
        for cohort in split(members, limit, even=max_cohort is None):
            try:
                train_group(cohort, torch.device(device), progress)
            except Exception as err:  # noqa: BLE001 - a bug fails its cohort only
                for job in cohort:
                    if job.result is None:
                        job_failed(job, err, progress)
    for job in alone:
        run_alone(job, progress)


def train_group(
    jobs: list[PendingJob], device: torch.device, progress: "CohortProgress"
) -> None:
    """One cohort: its data checked first (nothing is touched when it is missing or
    cannot train these runs), then every job's dir locked and settled, its loggers
    started, and what is left trained."""
    run = jobs[0].run  # cohort_key: what the cohort's runs share
    with torch_threads(run.threads), ExitStack() as locks:
        try:
            data = checked_data(run, None, device)
            digest = data_digest(run.data)
        except FashionbnError as err:
            for job in jobs:
                job_failed(job, err, progress)
            return
        ready = []
        for job in jobs:
            try:
                locks.enter_context(job_lock(job.out_dir))
            except JobBusy as busy:
                job_log(job, logging.WARNING, str(busy))
                progress.done(job, "skipped")
                continue  # result None: skipped, as the other launchers do
            except FashionbnError as err:
                job_failed(job, err, progress)
                continue
            try:
                if settle(job, device, digest, progress):
                    ready.append(job)
            except Exception as err:  # noqa: BLE001 - one bad dir fails one job
                job_failed(job, err, progress)
        for job in list(ready):
            try:
                job.loggers = start_loggers(job)
            except FashionbnError as err:
                job_failed(job, err, progress)
                ready.remove(job)
        by_epoch: dict[int, list[PendingJob]] = defaultdict(list)
        for job in ready:
            by_epoch[len(job.records)].append(job)
        for members in by_epoch.values():
            train_members(members, data, device, progress)


def settle(
    job: PendingJob, device: torch.device, digest: str, progress: "CohortProgress"
) -> bool:
    """prepare_job_dir for one job: False when it is finished (result set), True
    when it is to be trained (from epoch 1 or its checkpoint)."""
    previous, files = settle_job(job.run, job.out_dir, device, digest,
                                 {"launcher": "batched"})  # fmt: skip
    if files is None:
        job_log(job, logging.INFO, f"{job.out_dir.name} is {previous.status} already;"
                " skipping it")  # fmt: skip
        job.result = previous.records[-1]["test_acc"]
        progress.done(job, "skipped")
        return False
    job.files, job.records = files, list(previous.records)
    progress.starts_at(job, len(job.records))
    job.training = resumed_training(job.run, previous, device, job.out_dir)
    if previous.action == RESUME:
        job_log(job, logging.INFO, f"resuming after epoch {len(job.records)}")
    job.rng = global_rng_state()  # this run's, as the single-run path leaves them
    job.fresh = previous.action == FRESH
    return True


def start_loggers(job: PendingJob):
    """The job's loggers, once its input and dir are checked."""
    return job_loggers(job.run.logger, job.files, job.log_root, job.fresh, job.name)


def train_members(
    jobs: list[PendingJob], data, device: torch.device, progress: "CohortProgress"
) -> None:
    """Train jobs that stand at the same epoch as one cohort, writing each job's
    files after every epoch; a failure fails the jobs still training."""
    log.info(
        "a cohort of %d runs on %s from epoch %d: %s", len(jobs), device,
        len(jobs[0].records) + 1, ", ".join(job.name for job in jobs),
    )  # fmt: skip
    with durable_together():  # every run's files: synced and renamed together
        for job in jobs:
            progress.started(job)
            job.files.execution[-1]["cohort"] = len(jobs)  # the runs trained together
            job.files.start(job.records)
            if job.loggers is not None:
                job.loggers.log(job.records, [])
    first = jobs[0]
    bar = EpochBar(steps_per_run_epoch(first.run, first.training, data),
                   len(first.records))  # fmt: skip

    saved: list[tuple[PendingJob, list[dict], bool]] = []  # this epoch's, in order

    def on_epoch(k: int, records: list[dict], diverged: bool) -> bool:
        """Write run k's files of the epoch; False (it leaves the cohort) when that
        fails or failed at the last epoch."""
        job = jobs[k]
        bar.end_epoch(len(records))
        if isinstance(job.result, BaseException):
            return False  # its last epoch's files were not all renamed, or logged
        try:
            job.files.save_epoch(job.training, records, diverged, job.run.epochs,
                                 job.rng)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - its dir fails this job only
            fail_job(job.files, job.loggers, err, len(records) == 1)
            job_failed(job, err, progress)
            return False
        saved.append((job, records, diverged))
        return True

    def not_renamed(failures: dict[Path, Exception]) -> None:
        """Jobs whose files of the epoch did not all land fail, with the epochs
        before it (files land in write order: status.json did not)."""
        for job, records, _ in saved:
            err = failures.get(job.files.job_dir)
            if err is not None:
                job.files.epochs_on_disk = len(records) - 1
                fail_job(job.files, job.loggers, err, len(records) == 1)
                job_failed(job, err, progress)

    @contextmanager
    def saving() -> Iterator[None]:
        """Every run's files of an epoch synced and renamed together; then, for each
        run whose files landed, its loggers and its lines (the files first)."""
        saved.clear()
        with durable_together(not_renamed):
            yield
        for job, records, diverged in saved:
            if not isinstance(job.result, BaseException):
                epoch_saved(job, records, diverged, len(jobs), progress)

    try:
        statuses = train_cohort(
            [job.run for job in jobs], [job.training for job in jobs], data,
            [job.records for job in jobs], on_epoch, None,
            bar.step if bar.enabled else None, saving=saving,
        )  # fmt: skip
    except Exception as err:  # the finished epochs stay; a re-run continues
        for job in jobs:
            if job.result is not None:
                continue  # it finished, or failed on its own, before the failure
            fail_job(job.files, job.loggers, err, not job.records)
            job_failed(job, err, progress)
        return
    for job, status in zip(jobs, statuses):
        if status == STOPPED or isinstance(job.result, BaseException):
            continue  # failed, with its error line, when its epoch was not saved
        if job.loggers is not None:
            job.loggers.finish(status, job.out_dir)
        job.result = job.records[-1]["test_acc"]


def epoch_saved(
    job: PendingJob,
    records: list[dict],
    diverged: bool,
    cohort: int,
    progress: "CohortProgress",
) -> None:
    """After a run's files of the epoch landed: its loggers (one that fails fails
    the job), its epoch line, its end when it diverged or finished."""
    try:
        if job.loggers is not None:
            job.loggers.log(records, [])
    except Exception as err:  # noqa: BLE001 - fails this job only
        fail_job(job.files, job.loggers, err, len(records) == 1)
        job_failed(job, err, progress)
        return
    summary = epoch_summary(records[-1], job.run.epochs)
    job_log(job, logging.INFO, f"{summary}  (in a cohort of {cohort})")
    progress.epoch(job)
    if diverged:
        message = divergence_message(records[-1], job.run.divergence_loss)
        job_log(job, logging.WARNING, message)
    if diverged or len(records) == job.run.epochs:
        job.result = records[-1]["test_acc"]
        progress.done(job)


def run_alone(job: PendingJob, progress: "CohortProgress") -> None:
    """A job the batched path does not train (its `alone` says why), through the
    single-run path, its lines in its run.log as any job's."""
    job_log(job, logging.INFO, f"this job runs alone, not in a cohort: {job.alone}")
    progress.started(job)
    failure: Optional[BaseException] = None
    with job_lines(job):
        try:
            records = run_job(job.run, job.out_dir, log_root=job.log_root,
                              run_name=job.name)  # fmt: skip
        except JobBusy as busy:
            log.warning("%s", busy)
            progress.done(job, "skipped")
            return
        except Exception as err:  # noqa: BLE001 - fails this job only
            failure = err
    if failure is not None:
        job_failed(job, failure, progress)
        return
    job.result = records[-1]["test_acc"]
    progress.done(job)


def job_failed(job: PendingJob, err: BaseException, progress: "CohortProgress") -> None:
    """Record a job's failure: one `error:` line for a problem with its input or
    dir (as the other launchers print), a traceback for anything else; in the
    console and in its run.log."""
    job.result = err
    if isinstance(err, FashionbnError):
        job_log(job, logging.ERROR, f"error: {err}")
    else:
        job_log(job, logging.ERROR, f"{type(err).__name__}: {err}", err)
    progress.done(job, "failed")


def job_file_log(out_dir: Path) -> Optional[logging.Handler]:
    """A handler appending to the job's run.log, as Hydra's own (None when run.log is
    not a file: nothing is written through a symbolic link)."""
    if file_problem(out_dir / "run.log"):  # a link, a hard link, not a file
        return None
    # opened when written to and closed after each line (job_log): a sweep of
    # thousands of jobs holds no thousands of open files
    handler = logging.FileHandler(out_dir / "run.log", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


@contextmanager
def job_lines(job: PendingJob) -> Iterator[None]:
    """fashionbn's log lines also go to the job's run.log within the block."""
    root = logging.getLogger("fashionbn")
    if job.file_log is not None:
        root.addHandler(job.file_log)
    try:
        yield
    finally:
        if job.file_log is not None:
            root.removeHandler(job.file_log)
            job.file_log.close()


def job_log(
    job: PendingJob,
    level: int,
    message: str,
    error: Optional[BaseException] = None,
) -> None:
    """A line in the job's own run.log (and the console); `error`'s traceback with
    it."""
    exc_info = (type(error), error, error.__traceback__) if error else None
    if job.file_log is not None:
        record = log.makeRecord(log.name, level, __file__, 0, message, None, exc_info)
        job.file_log.handle(record)
        job.file_log.close()
    log.log(level, "%s: %s", job.name, message, exc_info=exc_info)
