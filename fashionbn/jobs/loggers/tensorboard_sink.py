"""TensorBoard: one events dir per job under `<sweep>/tensorboard/`, marked as the
job's own, caught up from the events already on disk on a (re)start."""

import logging
import os
from pathlib import Path
from typing import Optional

from fashionbn.config import ConfigError
from fashionbn.jobs.files import atomic_write
from fashionbn.jobs.loggers.common import (
    EXTRAS,
    LOGGERS_FILE,
    SCALARS,
    read_state,
    write_state,
)
from fashionbn.jobs.untrusted import UnsafeEntry, inside, read_text

log = logging.getLogger(__name__)

EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's files (events_dir)


def events_dir(job_dir: Path, log_root: Path, run_name: str) -> Path:
    """Where a job's TensorBoard events go: `<sweep>/tensorboard/<run name>/`, so that
    TensorBoard lists each run by what tells it apart (its dir name starts with the
    sweep's fixed overrides). Kept in the job dir's loggers.json (relative to the job
    dir, so a moved sweep keeps it); a job dir of an older fashionbn that holds events
    itself keeps them there. loggers.json is untrusted input and a fresh start
    removes the events in the dir it names, so a recorded dir is used only when it
    is this job's: the job dir itself, or a dir of the sweep's tensorboard/ whose
    OWNER_FILE names this job (one without it only when it is the dir this job would
    get now). UnsafeEntry when the dir the events would go to is reached through a
    symbolic link or is another job's (the sink then does not start)."""
    state = read_state(job_dir / LOGGERS_FILE)
    recorded = state.get("tensorboard_dir")
    board = log_root / "tensorboard"
    expected = board / run_name.replace("/", "%2F")  # one dir, whatever the name
    if board.is_symlink() or expected.is_symlink() or not inside(log_root, expected):
        raise UnsafeEntry(
            f"{board}: a symbolic link where TensorBoard's events go; nothing is "
            "written through one"
        )
    me = os.path.relpath(job_dir.resolve(), log_root.resolve())
    if isinstance(recorded, str) and recorded:
        directory = (job_dir / recorded).resolve()
        if directory == job_dir.resolve():
            return directory
        owner = events_owner(directory)
        if inside(board, directory) and (
            owner == me or (owner is None and directory == expected.resolve())
        ):
            return claimed(directory, me)
        log.warning(
            "%s: %s records tensorboard_dir=%r, which is not this job's events "
            "dir; not used (a fresh start would remove the events there)",
            job_dir, LOGGERS_FILE, recorded,
        )  # fmt: skip
    elif any(job_dir.glob(EVENTS_GLOB)):
        return job_dir
    if events_owner(expected) not in (None, me):
        raise UnsafeEntry(f"{expected} holds another job's TensorBoard events")
    directory = claimed(expected.resolve(), me)
    relative = os.path.relpath(directory, job_dir.resolve())
    write_state(job_dir / LOGGERS_FILE, {**state, "tensorboard_dir": relative})
    return directory


OWNER_FILE = ".fashionbn-job"  # in an events dir: the job dir (relative to the sweep)


def events_owner(directory: Path) -> Optional[str]:
    """The job an events dir says it belongs to (None: it says nothing)."""
    try:
        return read_text(directory, OWNER_FILE).strip() or None
    except (OSError, ValueError, UnsafeEntry):
        return None


def claimed(directory: Path, me: str) -> Path:
    """`directory`, made and marked as this job's events dir."""
    directory.mkdir(parents=True, exist_ok=True)
    if events_owner(directory) != me:
        atomic_write(directory / OWNER_FILE, lambda f: f.write(me + "\n"))
    return directory


class TensorBoardSink:
    """Event files in `<sweep>/tensorboard/<run name>/` (events_dir):
    `tensorboard --logdir <sweep>` shows one run per job, its distinguishing keys
    first, with per-epoch scalars, diagnostics and the HParams view."""

    name = "tensorboard"

    def __init__(self, directory: Path, params: dict, fresh: bool):
        try:
            from tensorboard.backend.event_processing.event_accumulator import (
                EventAccumulator,
            )
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as err:
            raise ConfigError(
                f"logger=tensorboard needs tensorboard: {EXTRAS}"
            ) from err
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:  # a run that starts again from epoch 1 is a new TensorBoard run
            for old in directory.glob(EVENTS_GLOB):
                if old.is_file() and not old.is_symlink():
                    old.unlink()
        accumulator = EventAccumulator(str(directory))
        accumulator.Reload()
        # per tag, the last step already on disk: a kill can come between two tags
        self.logged = {
            tag: max(event.step for event in accumulator.Scalars(tag))
            for tag in accumulator.Tags()["scalars"]
        }
        self.writer = SummaryWriter(log_dir=str(directory))
        try:
            has_hparams = bool(accumulator.PluginTagToContent("hparams"))
        except KeyError:  # no HParams in the dir yet
            has_hparams = False
        if not has_hparams:
            metrics = {tag: 0.0 for tag in SCALARS if tag != "seconds"}
            for summary in hparams(params, metrics):  # in this run, not a subfolder
                self.writer.file_writer.add_summary(summary)

    def log(self, records: list[dict], diagnostics: list[dict]) -> None:
        points = [
            (tag, record[tag], record["epoch"])
            for record in records
            for tag in SCALARS
            if record.get(tag) is not None
        ]
        points += [
            (f"diagnostics/{row['quantity']}/layer_{row['layer']}", row["value"],
             row["step"])
            for row in diagnostics
        ]  # fmt: skip
        for tag, value, step in points:
            if step > self.logged.get(tag, -1):  # only what is not there yet
                self.writer.add_scalar(tag, value, step)
                self.logged[tag] = step
        self.writer.flush()

    def finish(self, status: str, job_dir: Path) -> None:
        self.writer.close()
