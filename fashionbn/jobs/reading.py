"""One job dir, read and checked: its parameters (from the identity it computed), its
metrics and diagnostics, or why it cannot be used. The read side of
fashionbn.jobs.files;
fashionbn.analysis.table combines many of them into one table.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fashionbn.config import (
    MEASUREMENT_PREFIXES,
    flatten,
    identity_problem,
    normalise_identity,
)
from fashionbn.jobs.files import (
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    FAILED,
    LOCK_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUN_FILES,
    RUNNING,
    parse_diagnostics,
    parse_metrics,
    read_checked,
    read_status,
    shared_lock,
)
from fashionbn.jobs.untrusted import UnsafeEntry, entry_problem, read_yaml, unreadable

RERUN_HINT = "re-run the same command to restore it from checkpoint.pt"
# group choices whose sub-keys they stand for, e.g. model=batchnorm -> model.norm
CHOICES = {"model.name": "model", "optim.name": "optim"}


@dataclass
class Job:
    """One job dir as read: its parameters and metrics, or why it is not used."""

    job_dir: str
    params: dict[str, Any] = field(default_factory=dict)  # {} if unreadable
    identity_key: str = ""
    format: int = RESULTS_FORMAT
    execution: list = field(default_factory=list)
    data_sha256: Optional[str] = None  # what it trained on (None: not recorded)
    metrics: Optional[pd.DataFrame] = None  # set when the run is complete
    diagnostics: Optional[list] = None  # diagnostics.csv's rows, where it has one
    diverged: Optional[str] = None  # how it diverged
    diverged_metrics: Optional[pd.DataFrame] = None  # the epochs it ran, diverged
    # an unfinished run's verified epochs (running, failed, an extension under
    # way): they count at a budget they reach (--at-epoch), nowhere else
    partial_metrics: Optional[pd.DataFrame] = None
    problem: Optional[str] = None  # why it is skipped


def measured_only(key: str) -> bool:
    """A key that decides what a run records besides its metrics (diagnostics.*)."""
    return key.startswith(MEASUREMENT_PREFIXES)


def parameters(identity: dict) -> dict[str, Any]:
    """Flat, table-friendly parameters: model.name -> model; lists as text. Keys that
    only decide what else a run records (diagnostics.*) are not parameters."""
    params = {}
    for key, value in flatten(identity).items():
        if measured_only(key):
            continue
        if isinstance(value, (list, tuple)):
            value = json.dumps(value)
        params[CHOICES.get(key, key)] = value
    return params


def _identity_from_hydra(job_dir: Path) -> dict:
    """The identity of a dir older than status.json, from its .hydra/config.yaml
    (read as untrusted input: safe_load, types checked); ValueError saying why not."""
    name = ".hydra/config.yaml"
    try:
        config = read_yaml(job_dir, name)
    except (OSError, UnsafeEntry, ValueError) as err:
        raise ValueError(unreadable(name, err)) from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError("malformed .hydra/config.yaml")
    problem = identity_problem(config)
    if problem:
        raise ValueError(f".hydra/config.yaml: {problem}")
    return normalise_identity(config)


def being_trained(job_dir: Path) -> Optional[str]:
    """Who holds the job dir's lock right now ('pid N on host since ...'), or None.
    A `.lock` that is not a file (a symbolic link) is not opened."""
    if entry_problem(job_dir, LOCK_FILE):
        return None
    with shared_lock(job_dir) as holder:
        return holder or None  # ('': a `.lock` that cannot be opened)


def as_frame(records: list[dict]) -> pd.DataFrame:
    """metrics.csv's records as a frame with every column, numbers as floats."""
    metrics = pd.DataFrame(records).reindex(columns=METRIC_COLUMNS)
    return metrics.astype({c: float for c in METRIC_COLUMNS if c != "epoch"})


def read_job(job_dir: Path) -> Job:
    """Read one job dir; a Job with `problem` set says why it cannot be used."""
    job = Job(str(job_dir))
    foreign = [p for name in RUN_FILES if (p := entry_problem(job_dir, name))]
    if foreign:
        job.problem = (
            f"{'; '.join(foreign)}: not a job dir as fashionbn leaves it (nothing is "
            "read through such an entry); move the entry away"
        )
        return job
    status, status_problem = read_status(job_dir)
    if status_problem:
        job.problem = f"{status_problem}; re-run the same command to repair the dir"
        return job
    try:
        identity = (
            normalise_identity(status["config"])
            if status
            else _identity_from_hydra(job_dir)
        )
    except ValueError as err:
        job.problem = str(err)
        return job
    job.params = parameters(identity)
    numbers = {k: v for k, v in flatten(identity).items() if not measured_only(k)}
    job.identity_key = json.dumps(numbers, sort_keys=True, default=str)
    job.format = status["format"] if status else 1
    if job.format > RESULTS_FORMAT:
        job.problem = (
            f"written by a newer fashionbn (results format {job.format}; this version "
            f"reads formats up to {RESULTS_FORMAT}): aggregate it with that version"
        )
        return job
    job.execution = status.get("execution", []) if status else []
    job.data_sha256 = status.get("data_sha256") if status else None
    epochs = identity["epochs"]
    state = status["status"] if status else COMPLETE  # dirs older than status.json
    done = status["epochs_done"] if status else None
    digest = status.get("metrics_sha256") if status else None
    if state in (FAILED, RUNNING):
        if state == FAILED:
            why = f"failed after {done} of {epochs} epochs: {status.get('error')}"
        else:
            holder = being_trained(job_dir)
            why = f"incomplete: {done} of {epochs} epochs" + (
                f" (being trained right now by {holder})" if holder else ""
            )
        job.problem = why
        records, problem = read_checked(
            job_dir, METRICS_FILE, parse_metrics, digest, done
        )
        if problem is None and records:  # its epochs count at a budget it reached
            job.partial_metrics = as_frame(records)
        return job
    hint = f"; {RERUN_HINT}" if status else ""
    records, problem = read_checked(job_dir, METRICS_FILE, parse_metrics, digest, done)
    if problem:
        job.problem = problem + hint
        return job
    metrics = as_frame(records)
    if state == DIVERGED:
        job.diverged = (
            f"diverged at epoch {len(metrics)} (train_loss "
            f"{metrics['train_loss'].iloc[-1]:.4g})"
        )
        job.diverged_metrics = metrics  # its epochs before a smaller budget count
        return job
    if len(metrics) != epochs:
        job.problem = f"incomplete: {len(metrics)} of {epochs} epochs"
        return job
    if status and status.get("diagnostics_sha256"):
        digest = status["diagnostics_sha256"]
        rows, problem = read_checked(
            job_dir, DIAGNOSTICS_FILE, parse_diagnostics, digest
        )
        if problem:
            job.problem = problem + hint
            return job
        job.diagnostics = rows
    job.metrics = metrics
    return job
