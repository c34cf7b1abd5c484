"""What a job dir holds, decided: train it fresh, resume a verified checkpoint, skip a
finished run, or refuse (another config, other data, an older or newer fashionbn's
results, damage that cannot be repaired, entries that are not files of fashionbn's).

A run's identity (fashionbn.config normalise_identity) and the digest of the data it
trained on are in its status.json and in its checkpoint; the checkpoint carries a
digest of its contents (fashionbn.jobs.checkpoint), and status.json digests of
metrics.csv and diagnostics.csv. What cannot be verified is never trusted: an
unfinished run with nothing trustworthy to continue from starts again from epoch 1
(training is deterministic: only time is lost); a finished run whose files are damaged
is restored from its checkpoint, or refused with what to do. A finished run is never
lost to an extension: see `fashionbn.jobs.extension`.
"""

import logging
from pathlib import Path
from typing import Optional

from fashionbn.config import normalise_identity
from fashionbn.jobs.checkpoint import Checkpoint
from fashionbn.jobs.extension import (
    only_epochs_differ,
    settle_extension,
    shorter_run,
    with_more_epochs,
)
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    FINISHED_CHECKPOINT_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUN_FILES,
    RUNNING,
    STATUS_FILE,
    parse_diagnostics,
    parse_metrics,
    partial_debris,
    read_checked,
    read_status,
    shared_lock,
    write_diagnostics,
    write_metrics,
    write_status,
)
from fashionbn.jobs.previous import (
    DONE,
    ELSEWHERE,
    FORCE_HINT,
    FRESH,
    RESUME,
    JobDirError,
    Previous,
    another_config,
    refuse_other_data,
    remove_entry,
    trusted_checkpoint,
)
from fashionbn.jobs.untrusted import entry_problem

log = logging.getLogger(__name__)


def discard(job_dir: Path) -> None:
    """Remove every file a run wrote (prepare_job_dir has removed the debris of
    interrupted atomic writes already)."""
    for name in RUN_FILES:
        remove_entry(job_dir / name)


def foreign_problems(job_dir: Path) -> list[str]:
    """What is not a file among the entries fashionbn reads or replaces in job_dir
    (a symbolic link, a directory, a device), one problem each."""
    return [
        problem
        for name in (*RUN_FILES, LOCK_FILE, "loggers.json")
        if (problem := entry_problem(job_dir, name))
    ]


def foreign_entries(job_dir: Path) -> None:
    """Refuse a dir where a file fashionbn reads or replaces is something else (a
    symbolic link, a directory, a device): it is neither read, replaced nor removed,
    not even with force=true."""
    problems = foreign_problems(job_dir)
    if problems:
        raise JobDirError(
            f"{job_dir}: {'; '.join(problems)}: this is not a job dir as fashionbn "
            f"leaves it, so nothing in it is read, replaced or removed (not even with "
            f"force=true); move the entry away, or {ELSEWHERE}"
        )


def prepare_job_dir(
    job_dir: Path,
    identity: dict,
    force: bool,
    extend: bool = False,
    data_sha256: Optional[str] = None,
) -> Previous:
    """Make job_dir (locked by this process) ready for this run and say how it
    starts, temporary files of interrupted writes removed: keep a finished run
    (DONE), resume from its checkpoint, restore damaged files from the checkpoint, or
    discard what cannot be trusted (FRESH; files are removed). Raise JobDirError if
    it must not be touched (another config or data, another fashionbn's results,
    unrestorable damage, entries that are not fashionbn's files). `data_sha256`: the
    digest of the data this run would train on (None: not checked)."""
    foreign_entries(job_dir)
    for debris in partial_debris(job_dir):  # a killed writer's: the lock is ours now
        remove_entry(debris)
    present = [name for name in RUN_FILES if (job_dir / name).exists()]
    if force or not present:
        if force and present:
            log.warning("force=true: discarding the earlier run in %s", job_dir)
        discard(job_dir)
        shorter = shorter_run(job_dir, identity, data_sha256) if extend else None
        return shorter or Previous(FRESH)
    settle_extension(job_dir)
    status, status_problem = read_status(job_dir)
    if status is not None and status["epochs_done"] > 0:
        refuse_other_format(job_dir, status["format"])
        stored = normalise_identity(status["config"])
        refuse_other_data(job_dir, status.get("data_sha256"), data_sha256)
        if stored != identity and only_epochs_differ(stored, identity):
            return with_more_epochs(job_dir, stored, identity, status, data_sha256)
        if stored != identity:
            raise another_config(job_dir, stored, identity)
    if status is not None and status["status"] in (COMPLETE, DIVERGED):
        return finished_run(job_dir, identity, status)
    checkpoint, checkpoint_problem = trusted_checkpoint(job_dir, identity, status)
    execution = status.get("execution", []) if status is not None else []
    if checkpoint is not None:
        refuse_other_data(job_dir, checkpoint.data_sha256, data_sha256)
        if status_problem:
            log.warning(
                "%s: %s; continuing from %s, which is intact and of this config",
                job_dir, status_problem, CHECKPOINT_FILE,
            )  # fmt: skip
        extensions = (status or {}).get("extensions", checkpoint.extensions)
        if checkpoint.status in (COMPLETE, DIVERGED):  # killed before status.json
            kept = {**kept_fields(status), "extensions": extensions}
            return restored(job_dir, checkpoint, execution, kept)
        return Previous(
            RESUME, checkpoint.records, checkpoint.state, RUNNING, execution,
            list(extensions),
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


def finished_as_it_is(
    job_dir: Path, identity: dict, force: bool, data_sha256: Optional[str]
) -> Optional[tuple[str, list[dict]]]:
    """(its status, its records) of this run, finished in job_dir, where
    prepare_job_dir would keep it as it is (DONE) — read under the dir's lock held
    shared, nothing created or changed; None wherever anything else might hold (not
    finished, force, another config, other or unknown data, damage, a killed
    writer's debris, an extension under way, a process holding the dir, another
    format): prepare_job_dir decides those where the job trains. A launcher that
    sends jobs away (batched_slurm) skips a finished run with it, without a job."""
    if force or data_sha256 is None:
        return None
    try:
        if foreign_problems(job_dir):
            return None
        with shared_lock(job_dir) as holder:
            if holder is not None or partial_debris(job_dir) or (
                job_dir / FINISHED_CHECKPOINT_FILE
            ).exists():  # fmt: skip
                return None
            status, problem = read_status(job_dir)
            if (
                status is None or problem or status["format"] != RESULTS_FORMAT
                or status["status"] not in (COMPLETE, DIVERGED)
                or status["epochs_done"] < 1
                or status.get("data_sha256") != data_sha256
                or normalise_identity(status["config"]) != identity
            ):  # fmt: skip
                return None
            records, problem = finished_files(job_dir, status)
    except (OSError, ValueError, KeyError, TypeError):  # (a dir being changed)
        return None
    return None if problem else (status["status"], records)


def refuse_other_format(job_dir: Path, version: int) -> None:
    """An older or newer fashionbn's results are neither continued nor replaced."""
    if version == RESULTS_FORMAT:
        return
    which = "an older" if version < RESULTS_FORMAT else "a newer"
    raise JobDirError(
        f"{job_dir} holds results of {which} fashionbn (results format {version}; "
        f"this version writes {RESULTS_FORMAT}) that it cannot continue or vouch "
        f"for: {FORCE_HINT}, or {ELSEWHERE}"
    )


def finished_run(job_dir: Path, identity: dict, status: dict) -> Previous:
    """A complete/diverged run: DONE if its files are intact (the checkpoint is then
    not even read), else restored from the checkpoint, else refused."""
    epochs = status["epochs_done"]
    records, problem = finished_files(job_dir, status)
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


def finished_files(job_dir: Path, status: dict) -> tuple[list[dict], Optional[str]]:
    """A finished run's records from metrics.csv, and why its metrics.csv or
    diagnostics.csv is not what status.json says was written (None: both are)."""
    records, problem = read_checked(job_dir, METRICS_FILE, parse_metrics,
                                    status.get("metrics_sha256"),
                                    status["epochs_done"])  # fmt: skip
    return records, problem or diagnostics_problem(job_dir, status)


def diagnostics_problem(job_dir: Path, status: dict) -> Optional[str]:
    """Why diagnostics.csv is not what status.json says was written, or None."""
    digest = status.get("diagnostics_sha256")
    if digest is None:  # a run without diagnostics
        return None
    return read_checked(job_dir, DIAGNOSTICS_FILE, parse_diagnostics, digest)[1]


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
    kept = {k: v for k, v in (kept or {}).items() if v}
    if checkpoint.data_sha256 is not None:
        kept.setdefault("data_sha256", checkpoint.data_sha256)
    digests = {**kept, "metrics_sha256": write_metrics(checkpoint.records, job_dir)}
    if "diagnostics" in checkpoint.state:
        rows = checkpoint.state["diagnostics"]["rows"]
        digests["diagnostics_sha256"] = write_diagnostics(rows, job_dir)
    write_status(
        job_dir, checkpoint.status, checkpoint.identity, len(checkpoint.records),
        execution, **digests,
    )  # fmt: skip
    return Previous(DONE, checkpoint.records, status=checkpoint.status)
