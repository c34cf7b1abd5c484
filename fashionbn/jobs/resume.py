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
lost to an extension: see `settle_extension`.
"""

import logging
import os
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
    write_diagnostics,
    write_metrics,
    write_status,
)
from fashionbn.jobs.untrusted import entry_problem, inside

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
    # nothing is written until its first new epoch is (fashionbn.jobs.job JobFiles)
    extending: bool = False


def remove_entry(path: Path) -> None:
    """Remove a file (or a symbolic link itself, never its target); directories and
    anything that cannot be removed are left where they are."""
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
    except OSError:
        pass


def discard(job_dir: Path) -> None:
    """Remove every file a run wrote (and debris of interrupted atomic writes)."""
    for name in RUN_FILES:
        remove_entry(job_dir / name)
    for debris in partial_debris(job_dir):
        remove_entry(debris)


def foreign_entries(job_dir: Path) -> None:
    """Refuse a dir where a file fashionbn reads or replaces is something else (a
    symbolic link, a directory, a device): it is neither read, replaced nor removed,
    not even with force=true."""
    problems = [
        problem
        for name in (*RUN_FILES, LOCK_FILE, "loggers.json")
        if (problem := entry_problem(job_dir, name))
    ]
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
    """Make job_dir ready for this run and say how it starts: keep a finished run
    (DONE), resume from its checkpoint, restore damaged files from the checkpoint, or
    discard what cannot be trusted (FRESH; files are removed). Raise JobDirError if
    it must not be touched (another config or data, another fashionbn's results,
    unrestorable damage, entries that are not fashionbn's files). `data_sha256`: the
    digest of the data this run would train on (None: not checked)."""
    foreign_entries(job_dir)
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
    if status["status"] != COMPLETE:
        return (
            f"it is not finished ({status['status']} after {status['epochs_done']} "
            f"of {done} epochs): run it with epochs={done} first"
        )
    diagnostics = stored.get("diagnostics") or {}
    if diagnostics.get("enabled") and diagnostics.get("every_steps") is None:
        return (
            "diagnostics.every_steps=null spreads its measurements over the planned "
            "epochs, so a longer run measures at other steps (set "
            "diagnostics.every_steps=N for runs you want to extend)"
        )
    return None


def with_more_epochs(
    job_dir: Path,
    stored: dict,
    identity: dict,
    status: dict,
    data_sha256: Optional[str] = None,
) -> Previous:
    """Continue the run in job_dir (only `epochs` differs) from its checkpoint to
    the epochs asked for now, or refuse with why that would not be the same run
    (also when its checkpoint says it trained on other data)."""
    problem = extension_problem(stored, identity, status)
    if problem is None:
        checkpoint, problem = trusted_checkpoint(job_dir, stored, status)
        if checkpoint is not None and checkpoint.status != COMPLETE:
            problem = f"its checkpoint says {checkpoint.status}: it cannot go on"
        if checkpoint is not None:
            refuse_other_data(job_dir, checkpoint.data_sha256, data_sha256)
    if problem is not None:
        raise JobDirError(
            f"{job_dir} holds a run of this config with epochs={stored['epochs']}; "
            f"it cannot be continued to epochs={identity['epochs']}: {problem}; "
            f"{FORCE_HINT}, or {ELSEWHERE}"
        )
    log.info(
        "%s: continuing its %d-epoch run to %d epochs from %s",
        job_dir, stored["epochs"], identity["epochs"], CHECKPOINT_FILE,
    )  # fmt: skip
    extension = {"from_epochs": stored["epochs"], "to_epochs": identity["epochs"]}
    return Previous(
        RESUME, checkpoint.records, checkpoint.state, RUNNING,  # type: ignore
        status.get("execution", []), [*status.get("extensions", []), extension],
        extending=True,
    )  # fmt: skip


def settle_extension(job_dir: Path) -> None:
    """Finish what a killed extension left (the caller holds the dir's lock).

    Extending a finished run in place writes nothing until its first new epoch,
    and that epoch as: the finished checkpoint kept as FINISHED_CHECKPOINT_FILE (a
    hard link), the new checkpoint.pt, status.json (from here on the dir holds the
    extended run), metrics.csv, then the kept checkpoint removed. So while it is
    kept, status.json and metrics.csv are the finished run's unless status.json
    names the run checkpoint.pt holds: then the extension was saved and the kept
    checkpoint goes; otherwise the finished run's checkpoint is put back."""
    if not (job_dir / FINISHED_CHECKPOINT_FILE).exists():
        return
    status, _ = read_status(job_dir)
    current, _ = load_checkpoint(job_dir)
    if (
        status is not None
        and current is not None
        and normalise_identity(status["config"]) == normalise_identity(current.identity)
    ):
        remove_entry(job_dir / FINISHED_CHECKPOINT_FILE)  # saved (or not yet begun)
        return
    os.replace(job_dir / FINISHED_CHECKPOINT_FILE, job_dir / CHECKPOINT_FILE)
    log.warning(
        "%s: an extension of this run to more epochs was interrupted before its "
        "first new epoch was saved; the finished run is as it was",
        job_dir,
    )


def shorter_run(
    job_dir: Path, identity: dict, data_sha256: Optional[str] = None
) -> Optional[Previous]:
    """extend=true: a fresh job dir starts from the longest finished run of the same
    config with fewer epochs in a sibling dir (same sweep), when continuing it gives
    the same numbers and it trained on the same data; None when there is none. The
    sibling is only read, and only when it is a dir of the sweep (not a symbolic
    link); a damaged sibling is passed over."""
    candidates = []
    parent = job_dir.parent
    for sibling in sorted(parent.iterdir()):
        if sibling == job_dir or sibling.is_symlink() or not sibling.is_dir():
            continue
        if not inside(parent, sibling):
            continue
        status = read_status(sibling)[0]
        if status is None or status["status"] != COMPLETE:
            continue
        if status["format"] != RESULTS_FORMAT:
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
        trained_on = status.get("data_sha256") or checkpoint.data_sha256
        if trained_on is not None and data_sha256 not in (None, trained_on):
            log.warning(
                "extend=true: not starting from %s: it trained on other data (its "
                "data_sha256 %s..., the data now %s...)",
                sibling, trained_on[:12], data_sha256[:12],
            )  # fmt: skip
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
            extending=True,
        )  # fmt: skip
    return None


def another_config(job_dir: Path, stored: dict, requested: dict) -> JobDirError:
    changes = "; ".join(config_differences(stored, requested))
    return JobDirError(
        f"{job_dir} holds a run of another config ({changes}); refusing to mix "
        f"them: {ELSEWHERE}, or force=true to discard the old run"
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


def finished_run(job_dir: Path, identity: dict, status: dict) -> Previous:
    """A complete/diverged run: DONE if its files are intact (the checkpoint is then
    not even read), else restored from the checkpoint, else refused."""
    epochs = status["epochs_done"]
    digest = status.get("metrics_sha256")
    records, problem = read_checked(
        job_dir, METRICS_FILE, parse_metrics, digest, epochs
    )
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
