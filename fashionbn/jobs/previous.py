"""What a job dir held, as found: `Previous` (how the run starts: FRESH, RESUME or
DONE), the refusal (`JobDirError`, with what to do), and the checkpoint a dir may be
trusted to continue from. Shared by `resume` (deciding) and `extension` (continuing a
run to more epochs)."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fashionbn.config import FashionbnError, normalise_identity
from fashionbn.jobs.checkpoint import Checkpoint, load_checkpoint
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    FINISHED_CHECKPOINT_FILE,
    RUNNING,
    STATUS_FILE,
)

log = logging.getLogger(__name__)

FORCE_HINT = "force=true discards it and trains again"
ELSEWHERE = "use another hydra.sweep.dir/hydra.run.dir"


class JobDirError(FashionbnError):
    """The job dir holds something this run must not overwrite or cannot trust."""


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


FRESH, RESUME, DONE = "fresh", "resume", "done"


@dataclass
class Previous:
    """What a job dir held, decided: train FRESH, RESUME a checkpoint, or DONE."""

    action: str
    records: list[dict] = field(default_factory=list)
    state: Optional[dict] = None  # training state to RESUME from
    status: str = RUNNING  # COMPLETE / DIVERGED when DONE
    execution: list[dict] = field(default_factory=list)  # how earlier parts ran
    # each time the run was continued to more epochs than it first asked for:
    # {"from_epochs", "to_epochs"} (+ "from_dir" when it started from another dir)
    extensions: list[dict] = field(default_factory=list)
    # RESUME of a finished run to more epochs (in its own dir or from a sibling):
    # nothing is written until its first new epoch is (fashionbn.jobs.writer JobFiles)
    extending: bool = False


def remove_entry(path: Path) -> None:
    """Remove a file (or a symbolic link itself, never its target); directories and
    anything that cannot be removed are left where they are."""
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
    except OSError:
        pass


def another_config(job_dir: Path, stored: dict, requested: dict) -> JobDirError:
    changes = "; ".join(config_differences(stored, requested))
    return JobDirError(
        f"{job_dir} holds a run of another config ({changes}); refusing to mix "
        f"them: {ELSEWHERE}, or force=true to discard the old run"
    )


def refuse_other_data(
    job_dir: Path, trained_on: Optional[str], now: Optional[str]
) -> None:
    """A run trained on other data (by content) is never continued, extended or
    taken as done with this data. A run of a fashionbn that did not record it cannot
    be checked: it is taken as it is."""
    if trained_on is None or now is None or trained_on == now:
        return
    raise JobDirError(
        f"{job_dir} holds a run trained on other data (its data_sha256 "
        f"{trained_on[:12]}..., the data now {now[:12]}...: another copy or version "
        f"of the dataset's files); refusing to mix them: {FORCE_HINT} on this data, "
        f"or {ELSEWHERE}"
    )


def trusted_checkpoint(
    job_dir: Path, identity: dict, status: Optional[dict]
) -> tuple[Optional[Checkpoint], Optional[str]]:
    """The verified checkpoint of this identity, or (None, why not). One of another
    identity is refused when status.json cannot say what the dir holds. Read without
    the dir's lock (extend=true's siblings), a finished run whose extension is being
    written has its checkpoint in FINISHED_CHECKPOINT_FILE: that one is taken."""
    checkpoint, problem = load_checkpoint(job_dir)
    if checkpoint is None:
        return None, problem
    held = normalise_identity(checkpoint.identity)
    if held == identity:
        return checkpoint, None
    if status is None:  # the checkpoint is all we know of what the dir holds
        raise another_config(job_dir, held, identity)
    kept, _ = load_checkpoint(job_dir, FINISHED_CHECKPOINT_FILE)
    if kept is not None and normalise_identity(kept.identity) == identity:
        return kept, None
    return None, f"{CHECKPOINT_FILE} belongs to another config than {STATUS_FILE}"
