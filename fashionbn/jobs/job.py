"""A job dir's life cycle: identity, lock, run or continue or skip, write every epoch.

`run_job(cfg, job_dir)` trains cfg into job_dir, or finishes or skips what the dir
already holds (fashionbn.jobs.resume decides which, trusting only what it can verify).
One
process at a time: an exclusive lock (flock, released by the kernel when its holder
dies) guards the dir; a job dir in use elsewhere is skipped with one line. After every
epoch the checkpoint is written first, then metrics.csv (and diagnostics.csv), then
status.json, each atomically, so status.json never claims more than the files hold.
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
from omegaconf import OmegaConf

from fashionbn.config import FashionbnError, normalise_identity
from fashionbn.config.validation import check_config
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
    training_state,
)
from fashionbn.jobs.checkpoint import Checkpoint, save_checkpoint
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIVERGED,
    FAILED,
    FINISHED_CHECKPOINT_FILE,
    LOCK_FILE,
    RUNNING,
    WriteError,
    atomic_write,
    diagnostics_digest,
    metrics_digest,
    sync_directory,
    write_diagnostics,
    write_metrics,
    write_status,
)
from fashionbn.jobs.loggers import Loggers, make_loggers
from fashionbn.jobs.progress import EpochBar
from fashionbn.jobs.resume import (  # noqa: F401 - JobDirError: raised by run_job
    DONE,
    FORCE_HINT,
    FRESH,
    RESUME,
    JobDirError,
    Previous,
    prepare_job_dir,
    remove_entry,
    settle_extension,
)
from fashionbn.jobs.untrusted import read_bytes

log = logging.getLogger(__name__)


class JobBusy(FashionbnError):
    """Another live process is training this job dir right now."""


def run_identity(cfg) -> dict:
    """What determines a run's numbers: the resolved config minus where/how it runs."""
    return normalise_identity(
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    )


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
    """How this process runs: what can change a run's last digits, not its identity."""
    return {
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


class JobFiles:
    """Writes one run's files after every epoch; knows what is safely on disk."""

    def __init__(
        self,
        job_dir: Path,
        identity: dict,
        execution: list[dict],
        diagnostics: Optional[Diagnostics] = None,
        data_sha256: Optional[str] = None,
    ):
        self.job_dir, self.identity, self.execution = job_dir, identity, execution
        self.diagnostics = diagnostics
        self.data_sha256 = data_sha256  # what the run trained on, by content
        self.epochs_on_disk = 0
        self.started = False
        self.extensions: list[dict] = []  # continued to more epochs: from, to
        # a finished run continued to more epochs: its dir keeps describing the
        # finished run until the first new epoch is saved (save_epoch)
        self.extending = False

    def start(self, records: list[dict]) -> None:
        """Rewrite metrics.csv (and diagnostics.csv) from resumed records (a kill may
        have come before they were written) and mark the run as running. An
        extension writes nothing here: its dir still holds the finished run."""
        if self.extending:
            return
        self.started = True
        self._status(RUNNING, **self._write_files(records))

    def save_epoch(
        self,
        training: Training,
        records: list[dict],
        diverged: bool,
        epochs: int,
        rng: Optional[dict] = None,
    ) -> None:
        """Checkpoint, metrics.csv (and diagnostics.csv), then status.json; `rng`:
        the run's own global RNG states when it trained beside others. The first
        epoch of an extension is saved as resume.settle_extension expects."""
        finished = COMPLETE if len(records) == epochs else RUNNING
        status = DIVERGED if diverged else finished
        # checkpoint first: a resume rewrites the other files from it
        state = training_state(training, rng)
        if self.diagnostics is not None:
            state["diagnostics"] = self.diagnostics.state()
        checkpoint = Checkpoint(self.identity, status, records, state,
                                self.data_sha256, self.extensions)  # fmt: skip
        if self.extending:
            self._save_first_extended_epoch(checkpoint)
            return
        save_checkpoint(self.job_dir, checkpoint)
        self._status(status, **self._write_files(records))

    def _save_first_extended_epoch(self, checkpoint: Checkpoint) -> None:
        """The finished checkpoint kept aside, the new checkpoint, status.json (the
        dir now holds the extension), the csv files, the kept checkpoint removed: a
        kill at any instant leaves the finished run or the extended one."""
        finished = self.job_dir / FINISHED_CHECKPOINT_FILE
        if (self.job_dir / CHECKPOINT_FILE).exists():
            keep_aside(self.job_dir / CHECKPOINT_FILE, finished)
        save_checkpoint(self.job_dir, checkpoint)
        self.started, self.extending = True, False
        digests = {"metrics_sha256": metrics_digest(checkpoint.records)}
        if self.diagnostics is not None:
            digests["diagnostics_sha256"] = diagnostics_digest(self.diagnostics.rows)
        self.epochs_on_disk = len(checkpoint.records)
        self._status(checkpoint.status, **digests)
        self._write_files(checkpoint.records)
        remove_entry(finished)

    def _write_files(self, records: list[dict]) -> dict:
        digests = {}
        if self.diagnostics is not None:
            digests["diagnostics_sha256"] = write_diagnostics(
                self.diagnostics.rows, self.job_dir
            )
        digests["metrics_sha256"] = write_metrics(records, self.job_dir)
        self.epochs_on_disk = len(records)
        return digests

    def fail(self, error: BaseException, fresh: bool) -> None:
        """Mark the run failed, with what is safely on disk; never raises. Before it
        started writing, bad input leaves the dir as it was, and so does anything
        that stops a run being resumed (its files still describe it); an extension
        that did not get to save its first epoch puts the finished run's checkpoint
        back."""
        if not self.started:
            if (self.job_dir / FINISHED_CHECKPOINT_FILE).exists():
                try:
                    settle_extension(self.job_dir)
                except OSError:
                    pass  # the next command in the dir settles it
            if isinstance(error, FashionbnError) or not fresh:
                return
        try:
            self._status(FAILED, error=f"{type(error).__name__}: {error}")
        except (WriteError, OSError):
            pass  # status.json still describes the last epoch that was written

    def _status(self, status: str, **extra) -> None:
        if self.data_sha256 is not None:
            extra["data_sha256"] = self.data_sha256
        if self.extensions:
            extra["extensions"] = self.extensions
        write_status(
            self.job_dir, status, self.identity, self.epochs_on_disk, self.execution,
            **extra,
        )  # fmt: skip


def keep_aside(path: Path, kept: Path) -> None:
    """`kept` becomes a second name of the file at `path` (a hard link; a durable
    copy where the filesystem has none), synced before anything replaces `path`."""
    kept.unlink(missing_ok=True)
    try:
        os.link(path, kept)
        sync_directory(kept.parent)
    except OSError:
        data = read_bytes(path.parent, path.name)
        atomic_write(kept, lambda f: f.write(data), mode="wb")


def run_job(
    cfg,
    job_dir: Path,
    data: Optional[FashionData] = None,
    log_root: Optional[Path] = None,
    run_name: Optional[str] = None,
    on_ready: Optional[Callable[[], None]] = None,
) -> list[dict]:
    """Train cfg into job_dir, continue what it holds, or skip it if finished;
    return one record per epoch. Raises FashionbnError (one line) for bad input,
    a busy, foreign or damaged job dir, or a disk that cannot take the files.
    `log_root` is where loggers keep what is shared by a sweep (its MLflow store);
    by default the job dir; `run_name` what the loggers call the run (by default
    the job dir's name); `on_ready` is called once the dir is accepted, before a
    run is trained or continued into it."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    job_dir = Path(job_dir)
    refuse_linked_dir(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.threads):
        # the input is checked before the dir is touched: a bad data.train_size or
        # a missing dataset leaves it as it was
        data = checked_data(cfg, data, device)
        with job_lock(job_dir):
            return run_locked(cfg, job_dir, data, device, log_root, run_name,
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
    cfg,
    job_dir: Path,
    data: FashionData,
    device: torch.device,
    log_root: Optional[Path],
    run_name: Optional[str],
    on_ready: Optional[Callable[[], None]] = None,
) -> list[dict]:
    """run_job's work once the input is checked and the dir is locked: settle what
    the dir holds, then train what is left with the loggers; every epoch's record."""
    identity = run_identity(cfg)
    digest = data_digest(cfg.data)
    previous = prepare_job_dir(job_dir, identity, cfg.force, cfg.extend, digest)
    if previous.action == DONE:
        log.info(
            "%s is %s already; skipping it (force=true re-runs)",
            job_dir, previous.status,
        )  # fmt: skip
        return previous.records
    if on_ready is not None:
        on_ready()
    job = JobFiles(job_dir, identity, with_execution(previous, device))
    job.extensions, job.extending = previous.extensions, previous.extending
    job.data_sha256 = digest
    previous.records = list(previous.records)
    fresh = previous.action == FRESH
    loggers = make_loggers(
        cfg.logger, job_dir, Path(log_root or job_dir), identity,
        job.execution[-1], fresh, run_name,
    )  # fmt: skip
    try:
        status = train_job(cfg, job, previous, data, loggers, device)
    except WriteError as err:
        job.fail(err, fresh)
        finish(loggers, FAILED, job_dir)
        raise WriteError(
            f"{err}; free some space (or use another hydra.sweep.dir) and re-run "
            f"the same command: it continues after epoch {job.epochs_on_disk}"
        ) from err
    except Exception as err:  # the finished epochs stay; a re-run continues
        job.fail(err, fresh)
        finish(loggers, FAILED, job_dir)
        raise
    finish(loggers, status, job_dir)
    return previous.records


def train_job(
    cfg,
    job: "JobFiles",
    previous: Previous,
    data: FashionData,
    loggers: Optional[Loggers],
    device: torch.device,
) -> str:
    """Start or continue training into job's files (and loggers); COMPLETE or
    DIVERGED. `previous.records` grows by one record per epoch."""
    records = previous.records
    training = start_training(cfg, device)
    state = previous.state or {}
    if previous.action == RESUME:
        restored_from(training, state, job.job_dir)
        log.info("resuming %s after epoch %d", job.job_dir, len(records))
    if cfg.diagnostics.enabled:
        probe = probe_indices(len(data.train_labels), cfg.diagnostics.probe_size)
        job.diagnostics = make_diagnostics(cfg, training, data, probe, state)
    diagnostics = job.diagnostics

    def rows() -> list[dict]:
        return diagnostics.rows if diagnostics is not None else []

    bar = EpochBar(steps_per_run_epoch(cfg, training, data), len(records))

    def on_step() -> None:
        if diagnostics is not None:
            diagnostics.on_step()
        bar.step()

    def on_epoch(done: list[dict], diverged: bool) -> None:
        bar.end_epoch(len(done))
        job.save_epoch(training, done, diverged, cfg.epochs)
        if loggers is not None:  # after the files: they are the source of truth
            loggers.log(done, rows())

    job.start(records)
    if loggers is not None:  # what the tools lack of an interrupted run
        loggers.log(records, rows())
    log_start(cfg, data, device)
    if diagnostics is not None:
        diagnostics.start()
    return train_epochs(
        cfg, training, data, records, on_epoch,
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


def steps_per_run_epoch(cfg, training: Training, data: FashionData) -> int:
    return steps_per_epoch(
        len(data.train_labels), cfg.batch_size, has_batch_norm(training.model),
        cfg.data.drop_last,
    )  # fmt: skip


def make_diagnostics(
    cfg, training: Training, data: FashionData, probe: torch.Tensor, state: dict
) -> Diagnostics:
    """The run's probe, continuing the measurements a resumed checkpoint holds."""
    probe = probe.to(data.train_images.device)
    return Diagnostics(
        cfg.diagnostics, training.model, cfg.optim.lr,
        data.train_images.index_select(0, probe),
        data.train_labels.index_select(0, probe),
        steps_per_run_epoch(cfg, training, data),
        cfg.epochs, state.get("diagnostics"),
    )  # fmt: skip


def with_execution(
    previous: Previous, device: torch.device, launcher: Optional[dict] = None
) -> list[dict]:
    """The run's execution history plus this process (and what `launcher` says of
    it); warn when it changed. The size of a batched cohort changes no run's
    numbers, so it is not compared."""
    now = {**execution_info(device), **(launcher or {})}
    history = list(previous.execution)
    if history:
        last = {key: value for key, value in history[-1].items() if key != "cohort"}
    if history and last != now:
        log.warning(
            "this run continues with %s after %s: its numbers may differ in the last "
            "digits from an uninterrupted run (float reductions split differently)",
            now, history[-1],
        )  # fmt: skip
    return history if history and last == now else [*history, now]
