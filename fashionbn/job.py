"""A job dir's life cycle: identity, lock, skip / resume / refuse, checkpoints.

`run_job(cfg, job_dir)` trains cfg into job_dir, or finishes or skips what the dir
already holds. What it trusts:
- a run's *identity* is the config that determines its numbers (fashionbn.config
  normalise_identity); status.json and checkpoint.pt both carry it, and a dir holding a
  run of another identity is refused, never continued or mixed;
- checkpoint.pt carries a SHA-256 digest of its contents and status.json one of
  metrics.csv: a damaged or edited file is detected, never trusted;
- an unfinished run with nothing trustworthy to continue from starts again from epoch 1
  (removing the dir's earlier files: training is deterministic, so nothing is lost but
  time); a finished run whose metrics.csv is damaged is restored from its checkpoint,
  or refused with what to do;
- one process at a time: an exclusive lock (flock, released by the kernel when its
  holder dies) guards the dir; a job dir in use elsewhere is skipped with one line.
"""

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from fashionbn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fashionbn.config import FashionbnError, check_config, normalise_identity
from fashionbn.data import FashionData, load_fashion_mnist
from fashionbn.results import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIVERGED,
    FAILED,
    LOCK_FILE,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUN_FILES,
    RUNNING,
    STATUS_FILE,
    WriteError,
    read_metrics,
    read_status,
    write_metrics,
    write_status,
)
from fashionbn.train import (
    Training,
    log_start,
    resolve_device,
    restore_training,
    start_training,
    to_device,
    train_epochs,
    training_state,
)

log = logging.getLogger(__name__)

FORCE_HINT = "force=true discards it and trains again"


class JobBusy(FashionbnError):
    """Another live process is training this job dir right now."""


class JobDirError(FashionbnError):
    """The job dir holds something this run must not overwrite or cannot trust."""


def run_identity(cfg) -> dict:
    """What determines a run's numbers: the resolved config minus where/how it runs."""
    return normalise_identity(
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    )


def config_differences(stored: dict, requested: dict, prefix: str = "") -> list[str]:
    """'optim.lr: 0.001 -> 0.01' for every leaf that differs between two configs."""
    differences = []
    for key in sorted(set(stored) | set(requested)):
        old, new = stored.get(key), requested.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {old} -> {new}")
    return differences


# --- the lock ----------------------------------------------------------------------


@contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Hold job_dir's exclusive lock, or raise JobBusy naming its holder."""
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
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


# --- what the dir holds, and what to do with it ------------------------------------

FRESH, RESUME, DONE = "fresh", "resume", "done"


@dataclass
class Previous:
    """What a job dir held, decided: train FRESH, RESUME a checkpoint, or DONE."""

    action: str
    records: list[dict] = field(default_factory=list)
    state: Optional[dict] = None  # training state to RESUME from
    status: str = RUNNING  # COMPLETE / DIVERGED when DONE
    execution: list[dict] = field(default_factory=list)  # how earlier parts ran


def discard(job_dir: Path) -> None:
    """Remove every file a run wrote (and debris of interrupted atomic writes)."""
    for name in RUN_FILES:
        (job_dir / name).unlink(missing_ok=True)
    for debris in job_dir.glob(".*.partial-*"):
        debris.unlink(missing_ok=True)


def inspect_job_dir(job_dir: Path, identity: dict, force: bool) -> Previous:
    """Decide what to do with what job_dir holds; raise JobDirError if it must not
    be touched (another config, an older fashionbn's results, unrestorable damage)."""
    present = [name for name in RUN_FILES if (job_dir / name).exists()]
    if force or not present:
        if force and present:
            log.warning("force=true: discarding the earlier run in %s", job_dir)
        discard(job_dir)
        return Previous(FRESH)
    status, status_problem = read_status(job_dir)
    if status is not None and status["epochs_done"] > 0:
        if status["format"] < RESULTS_FORMAT:
            raise JobDirError(
                f"{job_dir} holds results of an older fashionbn (results format "
                f"{status['format']}; this version writes {RESULTS_FORMAT}) that it "
                f"cannot continue or vouch for: {FORCE_HINT}, or use another "
                "hydra.sweep.dir/hydra.run.dir"
            )
        if normalise_identity(status["config"]) != identity:
            raise another_config(job_dir, status["config"], identity)
    checkpoint, checkpoint_problem = load_checkpoint(job_dir)
    if checkpoint is not None and normalise_identity(checkpoint.identity) != identity:
        if status is None:  # the checkpoint is all we know of what the dir holds
            raise another_config(job_dir, checkpoint.identity, identity)
        checkpoint, checkpoint_problem = (
            None,
            (f"{CHECKPOINT_FILE} belongs to another config than {STATUS_FILE}"),
        )
    execution = status.get("execution", []) if status is not None else []
    if status is not None and status["status"] in (COMPLETE, DIVERGED):
        return finished_run(job_dir, status, checkpoint, checkpoint_problem)
    if checkpoint is not None:
        if status_problem:
            log.warning(
                "%s: %s; continuing from %s, which is intact and of this config",
                job_dir, status_problem, CHECKPOINT_FILE,
            )  # fmt: skip
        if checkpoint.status in (COMPLETE, DIVERGED):  # killed before status.json
            return restored(job_dir, checkpoint, execution)
        return Previous(
            RESUME, checkpoint.records, checkpoint.state, RUNNING, execution
        )
    lost = status is None or status["epochs_done"] > 0 or CHECKPOINT_FILE in present
    if lost:
        reasons = "; ".join(p for p in (status_problem, checkpoint_problem) if p)
        log.warning(
            "%s: %s: nothing there can be trusted to continue from, so this run "
            "starts again from epoch 1 (removing the dir's earlier files)",
            job_dir, reasons,
        )  # fmt: skip
    discard(job_dir)
    return Previous(FRESH)


def another_config(job_dir: Path, stored: dict, requested: dict) -> JobDirError:
    changes = "; ".join(config_differences(stored, requested))
    return JobDirError(
        f"{job_dir} holds a run of another config ({changes}); refusing to mix "
        "them: use another hydra.sweep.dir/hydra.run.dir, or force=true to "
        "discard the old run"
    )


def finished_run(
    job_dir: Path,
    status: dict,
    checkpoint: Optional[Checkpoint],
    checkpoint_problem: Optional[str],
) -> Previous:
    """A complete/diverged run: DONE if metrics.csv is intact, else restored from the
    checkpoint, else refused."""
    epochs = status["epochs_done"]
    problem = metrics_problem(job_dir, status)
    if problem is None:
        records = read_metrics(job_dir)
        return Previous(DONE, records, status=status["status"])
    if checkpoint is not None and (checkpoint.status, len(checkpoint.records)) == (
        status["status"], epochs,
    ):  # fmt: skip
        log.warning("%s: %s; restoring it from %s", job_dir, problem, CHECKPOINT_FILE)
        return restored(job_dir, checkpoint, status.get("execution", []))
    why_not = checkpoint_problem or (
        f"{CHECKPOINT_FILE} holds {len(checkpoint.records)} epochs"  # type: ignore
    )
    raise JobDirError(
        f"{job_dir}: {STATUS_FILE} says {status['status']} after {epochs} epochs, but "
        f"{problem}, and {why_not}: nothing trustworthy to restore it from; "
        f"{FORCE_HINT}"
    )


def metrics_problem(job_dir: Path, status: dict) -> Optional[str]:
    """Why metrics.csv is not what status.json says was written, or None."""
    path = job_dir / METRICS_FILE
    if not path.exists():
        return f"there is no {METRICS_FILE}"
    try:
        records = read_metrics(job_dir)
    except ValueError as err:
        return str(err)
    if len(records) != status["epochs_done"]:
        return (
            f"{METRICS_FILE} has {len(records)} epochs, {STATUS_FILE} says "
            f"{status['epochs_done']}"
        )
    digest = status.get("metrics_sha256")
    if digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        return f"{METRICS_FILE} was changed after the run wrote it (digest mismatch)"
    return None


def restored(job_dir: Path, checkpoint: Checkpoint, execution: list[dict]) -> Previous:
    """Rewrite metrics.csv and status.json of a finished run from its checkpoint."""
    digest = write_metrics(checkpoint.records, job_dir)
    write_status(
        job_dir, checkpoint.status, checkpoint.identity, len(checkpoint.records),
        execution, metrics_sha256=digest,
    )  # fmt: skip
    return Previous(DONE, checkpoint.records, status=checkpoint.status)


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

    def __init__(self, job_dir: Path, identity: dict, execution: list[dict]):
        self.job_dir, self.identity, self.execution = job_dir, identity, execution
        self.epochs_on_disk = 0

    def start(self, records: list[dict]) -> None:
        """Rewrite metrics.csv from resumed records (a kill may have come before it
        was written) and mark the run as running."""
        digest = write_metrics(records, self.job_dir)
        self.epochs_on_disk = len(records)
        self._status(RUNNING, metrics_sha256=digest)

    def save_epoch(
        self, training: Training, records: list[dict], diverged: bool, epochs: int
    ) -> None:
        finished = COMPLETE if len(records) == epochs else RUNNING
        status = DIVERGED if diverged else finished
        # checkpoint first: a resume rewrites metrics.csv from it
        state = training_state(training)
        save_checkpoint(self.job_dir, Checkpoint(self.identity, status, records, state))
        digest = write_metrics(records, self.job_dir)
        self.epochs_on_disk = len(records)
        self._status(status, metrics_sha256=digest)

    def fail(self, error: BaseException) -> None:
        """Mark the run failed, with what is safely on disk; never raises."""
        try:
            self._status(FAILED, error=f"{type(error).__name__}: {error}")
        except (WriteError, OSError):
            pass  # status.json still describes the last epoch that was written

    def _status(self, status: str, **extra) -> None:
        write_status(
            self.job_dir, status, self.identity, self.epochs_on_disk, self.execution,
            **extra,
        )  # fmt: skip


def run_job(cfg, job_dir: Path, data: Optional[FashionData] = None) -> list[dict]:
    """Train cfg into job_dir, continue what it holds, or skip it if finished;
    return one record per epoch. Raises FashionbnError (one line) for bad input,
    a busy, foreign or damaged job dir, or a disk that cannot take the files."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    identity = run_identity(cfg)
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir):
        previous = inspect_job_dir(job_dir, identity, cfg.force)
        if previous.action == DONE:
            log.info(
                "%s is %s already; skipping it (force=true re-runs)",
                job_dir, previous.status,
            )  # fmt: skip
            return previous.records
        job = JobFiles(job_dir, identity, with_execution(previous, device))
        records = list(previous.records)
        # the data is checked before the dir is touched: a bad data.train_size or a
        # missing dataset leaves it as it was
        data = to_device(data if data is not None else load_fashion_mnist(cfg.data),
                         device)  # fmt: skip
        try:
            job.start(records)
            training = start_training(cfg, device)
            if previous.action == RESUME:
                restore_training(training, previous.state)  # type: ignore[arg-type]
                log.info("resuming %s after epoch %d", job_dir, len(records))
            log_start(cfg, data, device)
            train_epochs(
                cfg, training, data, records,
                lambda done, diverged: job.save_epoch(
                    training, done, diverged, cfg.epochs
                ),
            )  # fmt: skip
        except WriteError as err:
            job.fail(err)
            raise WriteError(
                f"{err}; free some space (or use another hydra.sweep.dir) and re-run "
                f"the same command: it continues after epoch {job.epochs_on_disk}"
            ) from err
        except Exception as err:  # the finished epochs stay; a re-run continues
            job.fail(err)
            raise
    return records


def with_execution(previous: Previous, device: torch.device) -> list[dict]:
    """The run's execution history plus this process; warn when it changed."""
    now = execution_info(device)
    history = list(previous.execution)
    if history and history[-1] != now:
        log.warning(
            "this run continues with %s after %s: its numbers may differ in the last "
            "digits from an uninterrupted run (float reductions split differently)",
            now, history[-1],
        )  # fmt: skip
    return history if history and history[-1] == now else [*history, now]
