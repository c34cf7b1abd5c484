"""Continuing a finished run to more epochs: in its own dir (`with_more_epochs`),
from a shorter sibling with extend=true (`shorter_run`), and what a kill during an
extension leaves (`settle_extension`): a finished run is never lost to one."""

import logging
import os
from pathlib import Path
from typing import Optional

from fashionbn.config import normalise_identity
from fashionbn.jobs.checkpoint import load_checkpoint
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIVERGED,
    FINISHED_CHECKPOINT_FILE,
    RESULTS_FORMAT,
    RUNNING,
    read_status,
)
from fashionbn.jobs.previous import (
    ELSEWHERE,
    FORCE_HINT,
    RESUME,
    JobDirError,
    Previous,
    refuse_other_data,
    remove_entry,
    trusted_checkpoint,
)
from fashionbn.jobs.untrusted import inside

log = logging.getLogger(__name__)


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
