"""Job dirs -> the tidy results table: the read side of fashionbn.results.

A run's parameters come from what it computed (the identity in its status.json, or
for dirs without one its `.hydra/config.yaml`), never from how a command line was
spelt. A run is one identity (configuration and seed): two job dirs holding the same
run with the same numbers count once; with different numbers they are refused.
"""

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from fashionbn.config import flatten, normalise_identity
from fashionbn.results import (
    COMPLETE,
    DIVERGED,
    FAILED,
    LOCK_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    RESULTS_FORMAT,
    RUNNING,
    STATUS_FILE,
    read_metrics,
    read_status,
)

RERUN_HINT = "re-run the same command to restore it from checkpoint.pt"
# group choices whose sub-keys they stand for, e.g. model=batchnorm -> model.batch_norm
CHOICES = {"model.name": "model", "optim.name": "optim"}


class AggregateError(Exception):
    """Nothing usable to aggregate, or runs that contradict each other."""


@dataclass
class Job:
    """One job dir as read: its parameters and metrics, or why it is not used."""

    job_dir: str
    params: dict[str, Any] = field(default_factory=dict)  # {} if unreadable
    identity_key: str = ""
    format: int = RESULTS_FORMAT
    execution: list = field(default_factory=list)
    metrics: Optional[pd.DataFrame] = None  # set when the run is complete
    diverged: Optional[str] = None  # how it diverged
    problem: Optional[str] = None  # why it is skipped


@dataclass
class Sweep:
    """Everything read from one or more sweep dirs."""

    results: pd.DataFrame  # tidy: one row per (run, epoch)
    params: list[str]  # every parameter, as columns of `results`
    group_keys: list[str]  # "model" and every other parameter (not seed) that varies
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, reason)
    diverged: list[tuple[str, str]] = field(default_factory=list)  # (run dir, how)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dir, same as)
    older: list[str] = field(default_factory=list)  # used runs of an older format
    fixed: dict[str, tuple] = field(default_factory=dict)  # key -> (kept, others)
    model_options: dict[str, dict] = field(default_factory=dict)  # model -> {key: v}
    notes: list[str] = field(default_factory=list)


def parameters(identity: dict) -> dict[str, Any]:
    """Flat, table-friendly parameters: model.name -> model; lists as text."""
    params = {}
    for key, value in flatten(identity).items():
        if isinstance(value, (list, tuple)):
            value = json.dumps(value)
        params[CHOICES.get(key, key)] = value
    return params


def _identity_from_hydra(job_dir: Path) -> dict:
    try:
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"unreadable .hydra files ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError("malformed .hydra/config.yaml")
    return normalise_identity(config)


def being_trained(job_dir: Path) -> Optional[str]:
    """Who holds the job dir's lock right now ('pid N on host since ...'), or None."""
    try:
        fd = os.open(job_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 1000, 0).decode(errors="replace").strip() or "a process"
    finally:
        os.close(fd)


def read_job(job_dir: Path) -> Job:
    """Read one job dir; a Job with `problem` set says why it cannot be used."""
    job = Job(str(job_dir))
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
    job.identity_key = json.dumps(identity, sort_keys=True, default=str)
    job.format = status["format"] if status else 1
    job.execution = status.get("execution", []) if status else []
    epochs = identity["epochs"]
    state = status["status"] if status else COMPLETE  # dirs older than status.json
    done = status["epochs_done"] if status else None
    if state == FAILED:
        job.problem = f"failed after {done} of {epochs} epochs: {status.get('error')}"
        return job
    if state == RUNNING:
        holder = being_trained(job_dir)
        job.problem = f"incomplete: {done} of {epochs} epochs" + (
            f" (being trained right now by {holder})" if holder else ""
        )
        return job
    if not (job_dir / METRICS_FILE).is_file():
        job.problem = f"no {METRICS_FILE}" + (f"; {RERUN_HINT}" if status else "")
        return job
    try:
        records = read_metrics(job_dir)
    except ValueError as err:
        job.problem = str(err) + (f"; {RERUN_HINT}" if status else "")
        return job
    if done is not None and len(records) != done:
        job.problem = (
            f"{METRICS_FILE} has {len(records)} epochs but {STATUS_FILE} says {done}; "
            f"{RERUN_HINT}"
        )
        return job
    digest = status.get("metrics_sha256") if status else None
    if digest and hashlib.sha256((job_dir / METRICS_FILE).read_bytes()).hexdigest() != (
        digest
    ):
        job.problem = (
            f"{METRICS_FILE} was changed after the run wrote it (its digest does not "
            f"match {STATUS_FILE}); {RERUN_HINT}"
        )
        return job
    metrics = pd.DataFrame(records).reindex(columns=METRIC_COLUMNS)
    metrics = metrics.astype({c: float for c in METRIC_COLUMNS if c != "epoch"})
    if state == DIVERGED:
        job.diverged = (
            f"diverged at epoch {len(metrics)} (train_loss "
            f"{metrics['train_loss'].iloc[-1]:.4g})"
        )
        return job
    if len(metrics) != epochs:
        job.problem = f"incomplete: {len(metrics)} of {epochs} epochs"
        return job
    job.metrics = metrics
    return job


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every dir at or below `sweep_dir` that holds a job (.hydra/ or status.json)."""
    found = {p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")}
    found |= {p.parent for p in sweep_dir.glob(f"**/{STATUS_FILE}")}
    return sorted(found)


def _same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> Optional[str]:
    """None if two runs' metrics agree (timings aside), else the first difference."""
    a, b = a.drop(columns="seconds"), b.drop(columns="seconds")
    if a.equals(b):
        return None
    headline = ["test_acc", "test_loss", "train_acc", "train_loss"]
    columns = [*headline, *[c for c in a.columns if c not in headline]]
    for (_, row_a), (_, row_b) in zip(a.iterrows(), b.iterrows()):
        for column in columns:
            same = row_a[column] == row_b[column] or (
                pd.isna(row_a[column]) and pd.isna(row_b[column])
            )
            if not same:
                return (
                    f"{column} at epoch {int(row_a['epoch'])}: "
                    f"{row_a[column]:.6g} vs {row_b[column]:.6g}"
                )
    return f"{len(a)} vs {len(b)} epochs"


def _describe_execution(job: Job) -> str:
    runs = [
        f"{e.get('device')} with {plural(e.get('torch_threads'), 'torch thread')}"
        for e in job.execution
    ]
    return " then ".join(runs) or "an unrecorded device"


def plural(n, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def deduplicate(jobs: list[Job], label_keys: list[str]) -> tuple[list[Job], list]:
    """Keep one job per identity; refuse identities whose numbers disagree."""
    kept: dict[str, Job] = {}
    duplicates = []
    for job in jobs:
        first = kept.setdefault(job.identity_key, job)
        if first is job:
            continue
        difference = (
            _same_numbers(first.metrics, job.metrics)
            if first.metrics is not None and job.metrics is not None
            else None
        )
        if difference:
            label = ", ".join(f"{k}={job.params.get(k)}" for k in label_keys)
            raise AggregateError(
                f"{first.job_dir} and {job.job_dir} hold the same run ({label}) with "
                f"different numbers ({difference}; ran on {_describe_execution(first)}"
                f" vs {_describe_execution(job)}): refusing to count either; "
                "aggregate only one of them"
            )
        duplicates.append((job.job_dir, first.job_dir))
    return list(kept.values()), duplicates


def varying_keys(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if frame[k].nunique(dropna=False) > 1]


def read_sweep(sweep_dirs: list[Path]) -> Sweep:
    """Read every job of the given sweep dirs into one table; unusable runs are
    listed (skipped / diverged), duplicates counted once."""
    notes, seen_dirs, jobs = [], [], []
    for sweep_dir in sweep_dirs:
        if not Path(sweep_dir).is_dir():
            raise AggregateError(f"{sweep_dir}: no such directory")
        if Path(sweep_dir).resolve() in seen_dirs:
            notes.append(f"{sweep_dir} was given more than once; read once")
            continue
        seen_dirs.append(Path(sweep_dir).resolve())
        for job_dir in find_job_dirs(Path(sweep_dir)):
            if job_dir.resolve() not in {Path(j.job_dir).resolve() for j in jobs}:
                jobs.append(read_job(job_dir))
    complete = [j for j in jobs if j.metrics is not None]
    if not complete:
        raise AggregateError(no_runs_message(sweep_dirs, jobs))
    params = sorted({k for j in complete for k in j.params} - {"model", "seed"})
    params = ["model", *params, "seed"]
    complete, duplicates = deduplicate(complete, ["model", "seed"])
    diverged_jobs, diverged_duplicates = deduplicate(
        [j for j in jobs if j.diverged], ["model", "seed"]
    )
    complete_keys = {j.identity_key: j for j in complete}
    for job in diverged_jobs:
        if job.identity_key in complete_keys:
            raise AggregateError(
                f"{complete_keys[job.identity_key].job_dir} and {job.job_dir} hold "
                "the same run, complete in one and diverged in the other: refusing to "
                "count either; aggregate only one of them"
            )
    rows = [j.metrics.assign(run=j.job_dir, **j.params) for j in complete]
    results = pd.concat(rows, ignore_index=True)[["run", *params, *METRIC_COLUMNS]]
    group_keys, model_options = _group_keys(results, params)
    readable = pd.DataFrame([j.params for j in jobs if j.params])
    return Sweep(
        results=results,
        params=params,
        group_keys=group_keys,
        skipped=[(j.job_dir, j.problem) for j in jobs if j.problem],
        diverged=[(j.job_dir, j.diverged) for j in diverged_jobs],
        duplicates=duplicates + diverged_duplicates,
        older=[j.job_dir for j in complete if j.format < RESULTS_FORMAT],
        fixed=_fixed_keys(results, readable, params),
        model_options=model_options,
        notes=notes,
    )


def no_runs_message(sweep_dirs: list[Path], jobs: list[Job]) -> str:
    where = ", ".join(map(str, sweep_dirs))
    unusable = [j for j in jobs if j.problem or j.diverged]
    if not unusable:
        return f"no complete runs found in {where}"
    shown = "; ".join(f"{j.job_dir}: {j.problem or j.diverged}" for j in unusable[:3])
    more = f"; and {len(unusable) - 3} more" if len(unusable) > 3 else ""
    return (
        f"no complete runs found in {where}; {len(unusable)} unusable ({shown}{more})"
    )


def _group_keys(results: pd.DataFrame, params: list[str]) -> tuple[list[str], dict]:
    """'model' plus every parameter but seed that varies across the runs; a sub-key
    of a group choice (model.batch_norm for model) that the choice determines is left
    out of the groups and described per model instead."""
    runs = results.drop_duplicates("run")
    varying = varying_keys(runs, [p for p in params if p not in ("model", "seed")])
    implied = [
        key
        for key in varying
        for choice in CHOICES.values()
        if key.startswith(f"{choice}.")
        and runs.groupby(choice, dropna=False)[key].nunique(dropna=False).max() == 1
    ]
    model_options = {
        model: {k: part[k].iloc[0] for k in implied if k.startswith("model.")}
        for model, part in runs.groupby("model")
    }
    model_options = {m: o for m, o in model_options.items() if o}
    return ["model", *[k for k in varying if k not in implied]], model_options


def _fixed_keys(results: pd.DataFrame, readable: pd.DataFrame, params: list[str]):
    """Parameters constant across the runs used but not across every job read (the
    others diverged or were skipped): key -> (value kept, other values)."""
    runs = results.drop_duplicates("run")
    fixed = {}
    for key in params:
        if key == "seed" or key not in readable or runs[key].nunique(dropna=False) > 1:
            continue
        kept = runs[key].iloc[0]
        others = sorted({str(v) for v in readable[key] if str(v) != str(kept)})
        if others:
            fixed[key] = (kept, others)
    return fixed


def load_sweep(*sweep_dirs: str | Path) -> pd.DataFrame:
    """Tidy results (one row per run and epoch) of the sweep dirs, for notebooks."""
    return read_sweep([Path(d) for d in sweep_dirs]).results
