"""What a job dir holds, decided: train it fresh, resume a verified checkpoint, skip a
finished run, or refuse (another config, an older fashionbn's results, damage that
cannot be repaired).

A run's identity (fashionbn.config normalise_identity) is in its status.json and in its
checkpoint; the checkpoint carries a digest of its contents
(fashionbn.jobs.checkpoint), and
status.json digests of metrics.csv and diagnostics.csv. What cannot be verified is never
trusted: an unfinished run with nothing trustworthy to continue from starts again from
epoch 1 (training is deterministic: only time is lost); a finished run whose files are
damaged is restored from its checkpoint, or refused with what to do.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fashionbn.config import FashionbnError, normalise_identity
from fashionbn.jobs.checkpoint import Checkpoint, load_checkpoint
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUN_FILES,
    RUNNING,
    STATUS_FILE,
    partial_debris,
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
    # each time the run was continued to more epochs than it first asked for:
    # {"from_epochs", "to_epochs"} (+ "from_dir" when it started from another dir)
    extensions: list[dict] = field(default_factory=list)


def discard(job_dir: Path) -> None:
    """Remove every file a run wrote (and debris of interrupted atomic writes)."""
    for name in RUN_FILES:
        (job_dir / name).unlink(missing_ok=True)
    for debris in partial_debris(job_dir):
        debris.unlink(missing_ok=True)


def prepare_job_dir(
    job_dir: Path, identity: dict, force: bool, extend: bool = False
) -> Previous:
    """Make job_dir ready for this run and say how it starts: keep a finished run
    (DONE), resume from its checkpoint, restore damaged files from the checkpoint, or
    discard what cannot be trusted (FRESH; files are removed). Raise JobDirError if
    it must not be touched (another config, an older fashionbn's results,
    unrestorable damage)."""
    present = [name for name in RUN_FILES if (job_dir / name).exists()]
    if force or not present:
        if force and present:
            log.warning("force=true: discarding the earlier run in %s", job_dir)
        discard(job_dir)
        shorter = shorter_run(job_dir, identity) if extend else None
        return shorter or Previous(FRESH)
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
        if stored != identity and only_epochs_differ(stored, identity):
            return with_more_epochs(job_dir, stored, identity, status)
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
            return restored(job_dir, checkpoint, execution, kept_fields(status))
        return Previous(
            RESUME, checkpoint.records, checkpoint.state, RUNNING, execution,
            list(status.get("extensions", [])) if status is not None else [],
        )  # fmt: skip
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


# --- continuing a run to more epochs -----------------------------------------------


def only_epochs_differ(stored: dict, requested: dict) -> bool:
    return {**stored, "epochs": None} == {**requested, "epochs": None}


def extension_problem(stored: dict, requested: dict, status: dict) -> Optional[str]:
    """Why continuing this run (of `stored`, only `epochs` differing) to
    requested["epochs"] would not give the numbers of a run started with them, or
    None. With a constant learning rate nothing before an epoch depends on how many
    follow, so the only obstacles are a run that cannot go on and a measurement
    schedule spread over the planned epochs."""
    done, wanted = stored["epochs"], requested["epochs"]
    if wanted < done:
        return (
            f"it asked for {done} epochs, more than the {wanted} asked for now (its "
            f"metrics.csv holds every epoch: `python -m fashionbn.aggregate "
            f"--at-epoch {wanted}` reads the shorter budget)"
        )
    if status["status"] == DIVERGED:
        return f"it diverged after {status['epochs_done']} epochs: it cannot go on"
    diagnostics = stored.get("diagnostics") or {}
    if diagnostics.get("enabled") and diagnostics.get("every_steps") is None:
        return (
            "diagnostics.every_steps=null spreads its measurements over the planned "
            "epochs, so a longer run measures at other steps (set "
            "diagnostics.every_steps=N for runs you want to extend)"
        )
    return None


def with_more_epochs(
    job_dir: Path, stored: dict, identity: dict, status: dict
) -> Previous:
    """Continue the run in job_dir (only `epochs` differs) from its checkpoint to
    the epochs asked for now, or refuse with why that would not be the same run."""
    problem = extension_problem(stored, identity, status)
    if problem is None:
        checkpoint, problem = trusted_checkpoint(job_dir, stored, status)
        if checkpoint is not None and checkpoint.status == DIVERGED:
            problem = "it diverged: it cannot go on"
    if problem is not None:
        raise JobDirError(
            f"{job_dir} holds a run of this config with epochs={stored['epochs']}; "
            f"it cannot be continued to epochs={identity['epochs']}: {problem}; "
            f"{FORCE_HINT}, or use another hydra.sweep.dir/hydra.run.dir"
        )
    log.info(
        "%s: continuing its %d-epoch run to %d epochs from %s",
        job_dir, stored["epochs"], identity["epochs"], CHECKPOINT_FILE,
    )  # fmt: skip
    extension = {"from_epochs": stored["epochs"], "to_epochs": identity["epochs"]}
    return Previous(
        RESUME, checkpoint.records, checkpoint.state, RUNNING,  # type: ignore
        status.get("execution", []), [*status.get("extensions", []), extension],
    )  # fmt: skip


def shorter_run(job_dir: Path, identity: dict) -> Optional[Previous]:
    """extend=true: a fresh job dir starts from the longest finished run of the same
    config with fewer epochs in a sibling dir (same sweep), when continuing it gives
    the same numbers; None when there is none. The sibling is only read."""
    candidates = []
    for sibling in job_dir.parent.iterdir():
        status = read_status(sibling)[0] if sibling != job_dir else None
        if status is None or status["status"] != COMPLETE:
            continue
        if status.get("format", 1) < RESULTS_FORMAT:
            continue
        stored = normalise_identity(status["config"])
        if (
            only_epochs_differ(stored, identity)
            and stored["epochs"] < identity["epochs"]
            and extension_problem(stored, identity, status) is None
        ):
            candidates.append((stored["epochs"], sibling.name, sibling, stored, status))
    for epochs, name, sibling, stored, status in sorted(candidates, reverse=True):
        checkpoint, problem = trusted_checkpoint(sibling, stored, status)
        if checkpoint is None or checkpoint.status != COMPLETE:
            log.warning("extend=true: not starting from %s: %s", sibling, problem)
            continue
        log.info(
            "extend=true: %s starts from the finished %d-epoch run in %s",
            job_dir, epochs, sibling,
        )  # fmt: skip
        extension = {"from_epochs": epochs, "to_epochs": identity["epochs"],
                     "from_dir": name}  # fmt: skip
        return Previous(
            RESUME, checkpoint.records, checkpoint.state, RUNNING,
            status.get("execution", []), [*status.get("extensions", []), extension],
        )  # fmt: skip
    return None


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
        return restored(
            job_dir, checkpoint, status.get("execution", []), kept_fields(status)
        )
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


def kept_fields(status: Optional[dict]) -> dict:
    """status.json fields a restore keeps: what the checkpoint does not hold."""
    return {k: status[k] for k in ("data_sha256", "extensions") if k in (status or {})}


def restored(
    job_dir: Path,
    checkpoint: Checkpoint,
    execution: list[dict],
    kept: Optional[dict] = None,
) -> Previous:
    """Rewrite the files of a finished run (metrics.csv, diagnostics.csv, status.json)
    from its checkpoint; `kept`: status.json fields the checkpoint does not hold."""
    digests = {
        **(kept or {}),
        "metrics_sha256": write_metrics(checkpoint.records, job_dir),
    }
    if "diagnostics" in checkpoint.state:
        rows = checkpoint.state["diagnostics"]["rows"]
        digests["diagnostics_sha256"] = write_diagnostics(rows, job_dir)
    write_status(
        job_dir, checkpoint.status, checkpoint.identity, len(checkpoint.records),
        execution, **digests,
    )  # fmt: skip
    return Previous(DONE, checkpoint.records, status=checkpoint.status)
