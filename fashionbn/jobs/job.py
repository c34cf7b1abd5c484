"""A job dir's life cycle: identity, lock, run or continue or skip, write every epoch.

`run_job(cfg, job_dir)` resolves the config once (fashionbn.config.settings.
run_settings) and trains it into job_dir, or finishes or skips what the dir
already holds (fashionbn.jobs.resume decides which, trusting only what it can verify).
One process at a time: an exclusive lock (flock, released by the kernel when its holder
dies) guards the dir; a job dir in use elsewhere is skipped with one line. After every
epoch fashionbn.jobs.writer writes the checkpoint first, then metrics.csv (and
diagnostics.csv), then status.json, each atomically.

The steps of that life cycle — settle_job (what the locked dir holds), resumed_training,
job_loggers, save_and_log (each epoch: files, then loggers), fail_job — are the ones
fashionbn.jobs.cohort runs for each job of a batched cohort too: the two launchers
differ only in how the epochs are trained (one run, or a cohort at once).
"""

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from fashionbn.config import FashionbnError
from fashionbn.config.settings import RunSettings, run_settings
from fashionbn.core.data import FashionData, data_digest
from fashionbn.core.diagnostics import Diagnostics, probe_indices
from fashionbn.core.model import has_batch_norm
from fashionbn.core.train import (
    Training,
    checked_data,
    log_start,
    resolve_device,
    restore_training,
    start_training,
    steps_per_epoch,
    torch_threads,
    train_epochs,
)
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    FAILED,
    LOCK_FILE,
    WriteError,
)
from fashionbn.jobs.loggers import Loggers, make_loggers
from fashionbn.jobs.previous import (  # noqa: F401 - JobDirError: raised by run_job
    DONE,
    FORCE_HINT,
    FRESH,
    RESUME,
    JobDirError,
    Previous,
    remove_entry,
)
from fashionbn.jobs.progress import EpochBar
from fashionbn.jobs.resume import prepare_job_dir
from fashionbn.jobs.scheduler import slurm_job_id
from fashionbn.jobs.writer import JobFiles

log = logging.getLogger(__name__)


class JobBusy(FashionbnError):
    """Another live process is training this job dir right now."""


# --- the lock ----------------------------------------------------------------------


@contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Hold job_dir's exclusive lock, or raise JobBusy naming its holder (JobDirError
    when `.lock` is not a file: a symbolic link is never written through)."""
    try:
        fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        what = "a symbolic link" if err.errno == errno.ELOOP else err.strerror
        raise JobDirError(
            f"{job_dir}: {LOCK_FILE} cannot be used as the dir's lock ({what}); "
            "move it away"
        ) from None
    if os.fstat(fd).st_nlink > 1:  # a hard link: the holder line would change it
        os.close(fd)
        raise JobDirError(
            f"{job_dir}: {LOCK_FILE} has other names (hard links), which writing the "
            "lock's holder into it would change; move it away"
        )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1000, 0).decode(errors="replace").strip()
            raise JobBusy(
                f"{job_dir} is being trained by another process ({holder or 'unknown'})"
                "; skipping it here: that process finishes it"
            ) from None
        holder = f"pid {os.getpid()} on {os.uname().nodename} since {time.ctime()}"
        try:  # who holds it, for the message above; the lock itself is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode() + b"\n", 0)
        except OSError:
            pass  # a full disk must not stop the run here; it is reported on write
        yield
    finally:
        os.close(fd)  # releases the lock


# --- running a job -------------------------------------------------------------------


def execution_info(device: torch.device) -> dict:
    """How this process runs: what can change a run's last digits, not its identity
    (and the SLURM job it runs in, if it does: that changes no digit)."""
    info = {
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    job = slurm_job_id()
    return {**info, "slurm_job": job} if job else info


def run_job(
    cfg,
    job_dir: Path,
    data: Optional[FashionData] = None,
    log_root: Optional[Path] = None,
    run_name: Optional[str] = None,
    on_ready: Optional[Callable[[], None]] = None,
) -> list[dict]:
    """Train cfg (a composed config, or its RunSettings) into job_dir, continue what it
    holds, or skip it if finished; return one record per epoch. Raises FashionbnError
    (one line) for bad input, a busy, foreign or damaged job dir, or a disk that cannot
    take the files. `log_root` is where loggers keep what is shared by a sweep (its
    MLflow store); by default the job dir; `run_name` what the loggers call the run (by
    default the job dir's name); `on_ready` is called once the dir is accepted, before a
    run is trained or continued into it."""
    run = cfg if isinstance(cfg, RunSettings) else run_settings(cfg)
    device = resolve_device(run.device)
    job_dir = Path(job_dir)
    refuse_linked_dir(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(run.threads):
        # the input is checked before the dir is touched: a bad data.train_size or
        # a missing dataset leaves it as it was
        data = checked_data(run, data, device)
        with job_lock(job_dir):
            return run_locked(run, job_dir, data, device, log_root, run_name,
                              on_ready)  # fmt: skip


def refuse_linked_dir(job_dir: Path) -> None:
    """A job dir must be a directory of its own: never written through a symbolic
    link (the aggregate does not read one either)."""
    if job_dir.is_symlink() or (os.path.lexists(job_dir) and not job_dir.is_dir()):
        what = "a symbolic link" if job_dir.is_symlink() else "not a directory"
        raise JobDirError(
            f"{job_dir} is {what}: a job dir is written only as a directory of its "
            "own; move it away or use another hydra.sweep.dir/hydra.run.dir"
        )


def run_locked(
    run: RunSettings,
    job_dir: Path,
    data: FashionData,
    device: torch.device,
    log_root: Optional[Path],
    run_name: Optional[str],
    on_ready: Optional[Callable[[], None]] = None,
) -> list[dict]:
    """run_job's work once the input is checked and the dir is locked: settle what
    the dir holds, then train what is left with the loggers; every epoch's record."""
    previous, job = settle_job(run, job_dir, device, data_digest(run.data))
    if job is None:
        log.info(
            "%s is %s already; skipping it (force=true re-runs)",
            job_dir, previous.status,
        )  # fmt: skip
        return previous.records
    if on_ready is not None:
        on_ready()
    previous.records = list(previous.records)
    fresh = previous.action == FRESH
    loggers = job_loggers(run.logger, job, Path(log_root or job_dir), fresh, run_name)
    try:
        status = train_job(run, job, previous, data, loggers, device)
    except WriteError as err:
        fail_job(job, loggers, err, fresh)
        raise WriteError(
            f"{err}; free some space (or use another hydra.sweep.dir) and re-run "
            f"the same command: it continues after epoch {job.epochs_on_disk}"
        ) from err
    except Exception as err:  # the finished epochs stay; a re-run continues
        fail_job(job, loggers, err, fresh)
        raise
    finish(loggers, status, job_dir)
    return previous.records


# --- the steps of a job's life cycle, shared by both launchers (jobs.cohort) ---------


def settle_job(
    run: RunSettings, job_dir: Path, device: torch.device, digest: str, launcher=None
) -> tuple[Previous, Optional[JobFiles]]:
    """Decide what the locked dir holds (prepare_job_dir): (previous, None) when it
    holds this run finished (DONE), else (previous, the writer of the run's files),
    to train from epoch 1 or its checkpoint. `launcher`: what status.json's
    execution says of the launcher."""
    identity = run.identity
    previous = prepare_job_dir(job_dir, identity, run.force, run.extend, digest)
    if previous.action == DONE:
        return previous, None
    files = JobFiles(job_dir, identity, with_execution(previous, device, launcher))
    files.extensions, files.extending = previous.extensions, previous.extending
    files.data_sha256 = digest
    return previous, files


def resumed_training(
    run: RunSettings, previous: Previous, device: torch.device, job_dir: Path
) -> Training:
    """The run's training state: seeded and built, then its checkpoint's on RESUME."""
    training = start_training(run, device)
    if previous.action == RESUME:
        restored_from(training, previous.state or {}, job_dir)
    return training


def job_loggers(
    logger_cfg, files: JobFiles, log_root: Path, fresh: bool, run_name: Optional[str]
) -> Optional[Loggers]:
    """The run's loggers, once its input and dir are checked."""
    return make_loggers(
        logger_cfg, files.job_dir, log_root, files.identity, files.execution[-1],
        fresh, run_name,
    )  # fmt: skip


def save_and_log(
    files: JobFiles,
    loggers: Optional[Loggers],
    training: Training,
    records: list[dict],
    diverged: bool,
    epochs: int,
    rng: Optional[dict] = None,
    rows: Optional[list[dict]] = None,
) -> None:
    """An epoch: the files first (the source of truth), then the loggers."""
    files.save_epoch(training, records, diverged, epochs, rng)
    if loggers is not None:
        loggers.log(records, rows or [])


def fail_job(
    files: JobFiles, loggers: Optional[Loggers], error: BaseException, fresh: bool
) -> None:
    """Mark the run failed with what is safely on disk, and end its loggers' runs."""
    files.fail(error, fresh)
    finish(loggers, FAILED, files.job_dir)


def train_job(
    run: RunSettings,
    job: "JobFiles",
    previous: Previous,
    data: FashionData,
    loggers: Optional[Loggers],
    device: torch.device,
) -> str:
    """Start or continue training into job's files (and loggers); COMPLETE or
    DIVERGED. `previous.records` grows by one record per epoch."""
    records = previous.records
    training = resumed_training(run, previous, device, job.job_dir)
    state = previous.state or {}
    if previous.action == RESUME:
        log.info("resuming %s after epoch %d", job.job_dir, len(records))
    if run.diagnostics.enabled:
        probe = probe_indices(len(data.train_labels), run.diagnostics.probe_size)
        job.diagnostics = make_diagnostics(run, training, data, probe, state)
    diagnostics = job.diagnostics

    def rows() -> list[dict]:
        return diagnostics.rows if diagnostics is not None else []

    bar = EpochBar(steps_per_run_epoch(run, training, data), len(records))

    def on_step() -> None:
        if diagnostics is not None:
            diagnostics.on_step()
        bar.step()

    def on_epoch(done: list[dict], diverged: bool) -> None:
        bar.end_epoch(len(done))
        save_and_log(job, loggers, training, done, diverged, run.epochs, None, rows())

    job.start(records)
    if loggers is not None:  # what the tools lack of an interrupted run
        loggers.log(records, rows())
    log_start(run, data, device)
    if diagnostics is not None:
        diagnostics.start()
    return train_epochs(
        run, training, data, records, on_epoch,
        on_step if diagnostics is not None or bar.enabled else None,
    )  # fmt: skip


def restored_from(training: Training, state: dict, job_dir: Path) -> None:
    """restore_training, or JobDirError when the verified checkpoint's state does not
    fit this run's model or optimizer (a checkpoint made to pass its own digest)."""
    try:
        restore_training(training, state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise JobDirError(
            f"{job_dir}: {CHECKPOINT_FILE} holds a training state that does not fit "
            f"this run ({type(err).__name__}: {str(err)[:200]}); {FORCE_HINT}"
        ) from None


def finish(loggers: Optional[Loggers], status: str, job_dir: Path) -> None:
    if loggers is not None:
        loggers.finish(status, job_dir)


def steps_per_run_epoch(run: RunSettings, training: Training, data: FashionData) -> int:
    return steps_per_epoch(
        len(data.train_labels), run.batch_size, has_batch_norm(training.model),
        run.drop_last,
    )  # fmt: skip


def make_diagnostics(
    run: RunSettings,
    training: Training,
    data: FashionData,
    probe: torch.Tensor,
    state: dict,
) -> Diagnostics:
    """The run's probe, continuing the measurements a resumed checkpoint holds."""
    probe = probe.to(data.train_images.device)
    return Diagnostics(
        run.diagnostics, training.model, run.optim.lr,
        data.train_images.index_select(0, probe),
        data.train_labels.index_select(0, probe),
        steps_per_run_epoch(run, training, data),
        run.epochs, state.get("diagnostics"),
    )  # fmt: skip


UNCOMPARED = ("cohort", "slurm_job")  # execution keys that change no run's numbers


def with_execution(
    previous: Previous, device: torch.device, launcher: Optional[dict] = None
) -> list[dict]:
    """The run's execution history plus this process (and what `launcher` says of
    it); warn when it changed. The size of a batched cohort and the cluster job
    that trained it change no run's numbers, so they are not compared."""
    now = {**execution_info(device), **(launcher or {})}
    history = list(previous.execution)
    if not history:
        return [now]
    last = history[-1]
    if without(last, UNCOMPARED) != without(now, UNCOMPARED):
        log.warning(
            "this run continues with %s after %s: its numbers may differ in the last "
            "digits from an uninterrupted run (float reductions split differently)",
            now, last,
        )  # fmt: skip
    # the same kind of process again (its cohort's size is set when it trains)
    return history if without(last, ("cohort",)) == now else [*history, now]


def without(entry: dict, keys: tuple) -> dict:
    return {k: v for k, v in entry.items() if k not in keys}
