"""The job-dir writer: after every epoch the checkpoint first, then metrics.csv (and
diagnostics.csv), then status.json, each atomically, so status.json never claims more
than the files hold; a finished run being extended keeps its checkpoint aside until the
first new epoch is saved (fashionbn.jobs.extension settles a kill in between)."""

import os
from pathlib import Path
from typing import Optional

from fashionbn.config import FashionbnError
from fashionbn.core.atomic import durable_together, one_by_one
from fashionbn.core.diagnostics import Diagnostics
from fashionbn.core.train import Training, training_state
from fashionbn.jobs.checkpoint import Checkpoint, save_checkpoint
from fashionbn.jobs.extension import settle_extension
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIVERGED,
    FAILED,
    FINISHED_CHECKPOINT_FILE,
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
from fashionbn.jobs.previous import remove_entry
from fashionbn.jobs.untrusted import read_bytes


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
        epoch of an extension is saved as extension.settle_extension expects."""
        finished = COMPLETE if len(records) == epochs else RUNNING
        status = DIVERGED if diverged else finished
        # checkpoint first: a resume rewrites the other files from it
        state = training_state(training, rng)
        if self.diagnostics is not None:
            state["diagnostics"] = self.diagnostics.state()
        checkpoint = Checkpoint(self.identity, status, records, state,
                                self.data_sha256, self.extensions)  # fmt: skip
        if self.extending:  # its order with links and removals matters
            with one_by_one():
                self._save_first_extended_epoch(checkpoint)
            return
        with durable_together():  # two syncs, not two per file (or the cohort's)
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
