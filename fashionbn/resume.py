"""What a job dir holds, decided: train it fresh, resume a verified checkpoint, skip a
finished run, or refuse (another config, an older fashionbn's results, damage that
cannot be repaired).

A run's identity (fashionbn.config normalise_identity) is in its status.json and in its
checkpoint; the checkpoint carries a digest of its contents (fashionbn.checkpoint), and
status.json digests of metrics.csv and diagnostics.csv. What cannot be verified is never
trusted: an unfinished run with nothing trustworthy to continue from starts again from
epoch 1 (training is deterministic: only time is lost); a finished run whose files are
damaged is restored from its checkpoint, or refused with what to do.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fashionbn.checkpoint import Checkpoint, load_checkpoint
from fashionbn.config import FashionbnError, normalise_identity
from fashionbn.results import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUN_FILES,
    RUNNING,
    STATUS_FILE,
    read_checked,
    read_diagnostics,
    read_metrics,
    read_status,
    write_diagnostics,
    write_metrics,
    write_status,
)

log = logging.getLogger(__name__)

FORCE_HINT = "force=true discards it and trains again"


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
        stored = normalise_identity(status["config"])
        if stored != identity:
            raise another_config(job_dir, stored, identity)
    if status is not None and status["status"] in (COMPLETE, DIVERGED):
        return finished_run(job_dir, identity, status)
    checkpoint, checkpoint_problem = trusted_checkpoint(job_dir, identity, status)
    execution = status.get("execution", []) if status is not None else []
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


def trusted_checkpoint(
    job_dir: Path, identity: dict, status: Optional[dict]
) -> tuple[Optional[Checkpoint], Optional[str]]:
    """The verified checkpoint of this identity, or (None, why not). One of another
    identity is refused when status.json cannot say what the dir holds."""
    checkpoint, problem = load_checkpoint(job_dir)
    if checkpoint is None:
        return None, problem
    held = normalise_identity(checkpoint.identity)
    if held == identity:
        return checkpoint, None
    if status is None:  # the checkpoint is all we know of what the dir holds
        raise another_config(job_dir, held, identity)
    return None, f"{CHECKPOINT_FILE} belongs to another config than {STATUS_FILE}"


def finished_run(job_dir: Path, identity: dict, status: dict) -> Previous:
    """A complete/diverged run: DONE if its files are intact (the checkpoint is then
    not even read), else restored from the checkpoint, else refused."""
    epochs = status["epochs_done"]
    digest = status.get("metrics_sha256")
    records, problem = read_checked(job_dir, METRICS_FILE, read_metrics, digest, epochs)
    problem = problem or diagnostics_problem(job_dir, status)
    if problem is None:
        return Previous(DONE, records, status=status["status"])
    checkpoint, checkpoint_problem = trusted_checkpoint(job_dir, identity, status)
    if checkpoint is not None and (checkpoint.status, len(checkpoint.records)) == (
        status["status"], epochs,
    ):  # fmt: skip
        log.warning("%s: %s; restoring it from %s", job_dir, problem, CHECKPOINT_FILE)
        return restored(job_dir, checkpoint, status.get("execution", []),
                        status.get("data_sha256"))  # fmt: skip
    why_not = checkpoint_problem or (
        f"{CHECKPOINT_FILE} holds {len(checkpoint.records)} epochs"  # type: ignore
    )
    raise JobDirError(
        f"{job_dir}: {STATUS_FILE} says {status['status']} after {epochs} epochs, but "
        f"{problem}, and {why_not}: nothing trustworthy to restore it from; "
        f"{FORCE_HINT}"
    )


def diagnostics_problem(job_dir: Path, status: dict) -> Optional[str]:
    """Why diagnostics.csv is not what status.json says was written, or None."""
    digest = status.get("diagnostics_sha256")
    if digest is None:  # a run without diagnostics
        return None
    return read_checked(job_dir, DIAGNOSTICS_FILE, read_diagnostics, digest)[1]


def restored(
    job_dir: Path,
    checkpoint: Checkpoint,
    execution: list[dict],
    data_sha256: Optional[str] = None,
) -> Previous:
    """Rewrite the files of a finished run (metrics.csv, diagnostics.csv, status.json)
    from its checkpoint."""
    digests = {"metrics_sha256": write_metrics(checkpoint.records, job_dir)}
    if data_sha256 is not None:
        digests["data_sha256"] = data_sha256
    if "diagnostics" in checkpoint.state:
        rows = checkpoint.state["diagnostics"]["rows"]
        digests["diagnostics_sha256"] = write_diagnostics(rows, job_dir)
    write_status(
        job_dir, checkpoint.status, checkpoint.identity, len(checkpoint.records),
        execution, **digests,
    )  # fmt: skip
    return Previous(DONE, checkpoint.records, status=checkpoint.status)
