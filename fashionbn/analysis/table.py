"""Job dirs -> the tidy results table (fashionbn.jobs.reading reads each one).

A run's parameters come from what it computed (the identity in its status.json, or
for dirs without one its `.hydra/config.yaml`), never from how a command line was
spelt. A run is one identity (configuration and seed): two job dirs holding the same
run with the same numbers count once; with different numbers they are refused.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.analysis.arms import (
    describe_models,
    fixed_keys,
    grouping_keys,
    same_networks,
    split_networks,
)
from fashionbn.analysis.markdown import plural
from fashionbn.jobs.files import (
    DIAGNOSTIC_COLUMNS,
    METRIC_COLUMNS,
    PRECISE_COLUMNS,
    RESULTS_FORMAT,
    SUMMARISED,
)
from fashionbn.jobs.reading import Job, read_job
from fashionbn.jobs.untrusted import job_dirs


class AggregateError(Exception):
    """Nothing usable to aggregate, or runs that contradict each other."""


@dataclass
class Sweep:
    """Everything read from one or more sweep dirs."""

    results: pd.DataFrame  # tidy: one row per (run, epoch)
    params: list[str]  # every parameter, as columns of `results`
    group_keys: list[str]  # "model" and every other parameter (not seed) that varies
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, reason)
    diverged: list[tuple[str, str]] = field(default_factory=list)  # (run dir, how)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dir, same as)
    # (dir, dir of the longer run): a run whose epochs are the first epochs of a
    # longer run of the same config (extended with extend=true): counted once
    extended: list[tuple[str, str]] = field(default_factory=list)
    older: list[str] = field(default_factory=list)  # used runs of an older format
    fixed: dict[str, tuple] = field(default_factory=dict)  # key -> (kept, others)
    # model -> {key: value}: what each model is (its model.* keys that are the same in
    # all its runs; those that vary are group keys)
    model_options: dict[str, dict] = field(default_factory=dict)
    same_models: list[list[str]] = field(default_factory=list)  # names, one network
    # model -> the model.* keys that vary within its runs with values no other model
    # has in the same way: one name, several networks (split_networks)
    split_models: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the parameters of the diverged runs (one row each), and their epochs (tidy, like
    # results: the epochs before the one that diverged count at a smaller budget)
    diverged_params: pd.DataFrame = field(default_factory=pd.DataFrame)
    diverged_results: pd.DataFrame = field(default_factory=pd.DataFrame)
    # tidy: run, its parameters, step, epoch, layer, quantity, value (runs that have it)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)


def _same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> Optional[str]:
    """None if two runs' metrics agree (timings aside, and what only one of them
    measured: precise statistics), else the first difference."""
    unmeasured = [c for c in PRECISE_COLUMNS if a[c].isna().all() or b[c].isna().all()]
    a, b = (
        a.drop(columns=["seconds", *unmeasured]),
        b.drop(columns=["seconds", *unmeasured]),
    )
    if a.equals(b):
        return None
    headline = [c for c in SUMMARISED if c in a.columns]  # the summary's order first
    columns = [*headline, *[c for c in a.columns if c not in headline]]
    for (_, row_a), (_, row_b) in zip(a.iterrows(), b.iterrows()):
        for column in columns:
            same = row_a[column] == row_b[column] or (
                pd.isna(row_a[column]) and pd.isna(row_b[column])
            )
            if not same:
                return (
                    f"{column} at epoch {int(row_a['epoch'])}: "
                    f"{exact(row_a[column])} vs {exact(row_b[column])}"
                )
    return f"{len(a)} vs {len(b)} epochs"


def exact(value) -> str:
    """A number with every digit it needs to tell it from its neighbours (Python's
    shortest round-trip form): 2.3086700439453125, not 2.30867."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def measured_precisely(job: Job) -> bool:
    """Whether the run recorded an evaluation with precise BatchNorm statistics."""
    return bool(job.metrics["test_acc_precise"].notna().any())


def _describe_execution(job: Job) -> str:
    """'cpu with 1 torch thread, batched launcher in a cohort of 4', for every
    process that trained the run."""
    runs = []
    for e in job.execution:
        how = f"{e.get('device')} with {plural(e.get('torch_threads'), 'torch thread')}"
        if e.get("launcher"):
            how += f", {e['launcher']} launcher"
            if e.get("cohort"):
                how += f" in a cohort of {e['cohort']}"
            if e.get("slurm_job"):
                how += f" (SLURM job {e['slurm_job']})"
        runs.append(how)
    return " then ".join(runs) or "an unrecorded device"


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


def read_sweep(sweep_dirs: list[Path], at_epoch: Optional[int] = None) -> Sweep:
    """Read every job of the given sweep dirs into one table; unusable runs are
    listed (skipped / diverged), duplicates counted once. With `at_epoch`, an
    unfinished run (running, failed, an extension under way) whose verified
    metrics.csv holds that many epochs counts with them: with a constant learning
    rate they are the run at that budget (fashionbn.analysis.protocol at_budget
    then cuts every run there)."""
    jobs, notes = read_jobs(sweep_dirs)
    if at_epoch is not None:
        notes += with_unfinished_runs(jobs, at_epoch)
    # of two dirs holding the same run, keep the one that measured most
    complete = sorted(
        (j for j in jobs if j.metrics is not None),
        key=lambda j: (j.diagnostics is None, not measured_precisely(j), j.job_dir),
    )
    if not complete:
        raise AggregateError(no_runs_message(sweep_dirs, jobs))
    params = sorted({k for j in complete for k in j.params} - {"model", "seed"})
    params = ["model", *params, "seed"]
    complete, duplicates = deduplicate(complete, ["model", "seed"])
    diverged_jobs, diverged_duplicates = deduplicate(
        [j for j in jobs if j.diverged], ["model", "seed"]
    )
    refuse_mixed_data([*complete, *diverged_jobs])
    refuse_complete_and_diverged(complete, diverged_jobs)
    complete, extended = count_extended_once(complete)
    shorter = {run for run, _ in extended}
    results = tidy(complete, params)
    group_keys = grouping_keys(results, params)
    readable = pd.DataFrame(
        [j.params for j in jobs if j.params and j.job_dir not in shorter]
    )
    return Sweep(
        same_models=same_networks(results),
        split_models=split_networks(results),
        diverged_params=pd.DataFrame(
            [{"run": j.job_dir, **j.params} for j in diverged_jobs]
        ),
        diverged_results=tidy(diverged_jobs, params, "diverged_metrics"),
        diagnostics=diagnostics_table(complete, params),
        results=results,
        params=params,
        group_keys=group_keys,
        skipped=[(j.job_dir, j.problem) for j in jobs if j.problem],
        diverged=[(j.job_dir, j.diverged) for j in diverged_jobs],
        duplicates=duplicates + diverged_duplicates,
        extended=extended,
        older=[j.job_dir for j in complete if j.format < RESULTS_FORMAT],
        fixed=fixed_keys(results, readable, params),
        model_options=describe_models(results, group_keys),
        notes=notes,
    )


def with_unfinished_runs(jobs: list[Job], at_epoch: int) -> list[str]:
    """Let the unfinished runs that reached `at_epoch` count (their verified epochs as
    their metrics); a note saying which."""
    counted = []
    for job in jobs:
        if job.partial_metrics is not None and len(job.partial_metrics) >= at_epoch:
            job.metrics, job.problem = job.partial_metrics, None
            counted.append(job.job_dir)
    if not counted:
        return []
    return [
        f"at epoch {at_epoch}: {plural(len(counted), 'unfinished run')} (e.g. "
        f"{counted[0]}: an extension under way, or an interrupted run) "
        f"{'counts' if len(counted) == 1 else 'count'} with its first {at_epoch} "
        "epochs"
    ]


def read_jobs(sweep_dirs: list[Path]) -> tuple[list[Job], list[str]]:
    """Every job dir under the sweep dirs, read once (nested or repeated sweep dirs
    share jobs), and notes on what was given twice."""
    notes, seen_dirs, seen_jobs, jobs = [], set(), set(), []
    for sweep_dir in sweep_dirs:
        if not Path(sweep_dir).is_dir():
            what = (
                "not a directory" if Path(sweep_dir).exists() else "no such directory"
            )
            raise AggregateError(f"{sweep_dir}: {what}")
        if Path(sweep_dir).resolve() in seen_dirs:
            notes.append(f"{sweep_dir} was given more than once; read once")
            continue
        seen_dirs.add(Path(sweep_dir).resolve())
        found, refused = job_dirs(Path(sweep_dir))
        jobs += [Job(path, problem=why) for path, why in refused]
        for job_dir in found:
            if job_dir.resolve() not in seen_jobs:
                seen_jobs.add(job_dir.resolve())
                jobs.append(read_job(job_dir))
    return jobs, notes


def refuse_mixed_data(jobs: list[Job]) -> None:
    """Runs of one dataset (data.name) that trained on different copies of its files
    (by content: their data_sha256) are not comparable; runs of a fashionbn that did
    not record it cannot be checked and are taken as they are."""
    first: dict[str, Job] = {}
    for job in jobs:
        if job.data_sha256 is None:
            continue
        name = str(job.params.get("data.name"))
        seen = first.setdefault(name, job)
        if seen.data_sha256 != job.data_sha256:
            raise AggregateError(
                f"{seen.job_dir} and {job.job_dir} trained on different data, both "
                f"data.name={name} (data_sha256 {seen.data_sha256[:12]}... vs "
                f"{job.data_sha256[:12]}...: another copy or version of the dataset's "
                "files): their numbers are not comparable; aggregate the runs of one "
                "copy"
            )


def without_epochs(job: Job) -> str:
    """A job's identity key with its number of epochs left out."""
    key = json.loads(job.identity_key)
    key.pop("epochs", None)
    return json.dumps(key, sort_keys=True)


def count_extended_once(jobs: list[Job]) -> tuple[list[Job], list[tuple[str, str]]]:
    """A run whose metrics are the first epochs of a longer run of the same config
    (the run it was extended from, or the same run asked for fewer epochs: the
    learning rate is constant) is that run at a shorter budget: counted once, as the
    longer run. The same run with other numbers in their shared epochs (trained with
    another thread count, say) is refused, as duplicates with other numbers are.
    Also returns (shorter run, longer run) pairs."""
    by_config: dict[str, list[Job]] = {}
    for job in jobs:
        by_config.setdefault(without_epochs(job), []).append(job)
    folded: dict[int, str] = {}
    for group in by_config.values():
        group = sorted(group, key=lambda j: (-len(j.metrics), j.job_dir))
        longest = group[0]
        for job in group[1:]:
            shared = longest.metrics.iloc[: len(job.metrics)].reset_index(drop=True)
            difference = _same_numbers(shared, job.metrics.reset_index(drop=True))
            if difference:
                raise AggregateError(
                    f"{job.job_dir} and {longest.job_dir} hold the same run (a "
                    f"{len(job.metrics)}-epoch run and the first epochs of a "
                    f"{len(longest.metrics)}-epoch one: the learning rate is "
                    f"constant) with different numbers ({difference}; ran on "
                    f"{_describe_execution(job)} vs {_describe_execution(longest)}): "
                    "refusing to count either; aggregate only one of them"
                )
            folded[id(job)] = longest.job_dir
    kept = [job for job in jobs if id(job) not in folded]
    return kept, [(job.job_dir, folded[id(job)]) for job in jobs if id(job) in folded]


def refuse_complete_and_diverged(complete: list[Job], diverged: list[Job]) -> None:
    """One run complete in one dir and diverged in another cannot both be counted."""
    complete_keys = {j.identity_key: j for j in complete}
    for job in diverged:
        if job.identity_key in complete_keys:
            raise AggregateError(
                f"{complete_keys[job.identity_key].job_dir} and {job.job_dir} hold "
                "the same run, complete in one and diverged in the other: refusing to "
                "count either; aggregate only one of them"
            )


def diagnostics_table(jobs: list[Job], params: list[str]) -> pd.DataFrame:
    """Tidy: run, its parameters, step, epoch, layer, quantity, value, for the runs
    that measured diagnostics (a run without a key, another optimizer's, gets it
    empty)."""
    frames = [
        pd.DataFrame(j.diagnostics, columns=DIAGNOSTIC_COLUMNS).assign(
            run=j.job_dir, **j.params
        )
        for j in jobs
        if j.diagnostics
    ]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).reindex(
        columns=["run", *params, *DIAGNOSTIC_COLUMNS]
    )


def tidy(jobs: list[Job], params: list[str], metrics: str = "metrics") -> pd.DataFrame:
    """One row per (run, epoch): run, every parameter, the metrics (the jobs'
    attribute `metrics` names)."""
    rows = [getattr(j, metrics).assign(run=j.job_dir, **j.params) for j in jobs]
    if not rows:
        return pd.DataFrame(columns=["run", *params, *METRIC_COLUMNS])
    frame = pd.concat(rows, ignore_index=True)
    for key in BUILT_IN_WHEN_ABSENT:  # a value, not a setting that does not apply:
        if key in frame:  # a built-in run pairs only with built-in runs
            frame[key] = frame[key].fillna(BUILT_IN)
    return frame.reindex(columns=["run", *params, *METRIC_COLUMNS])


# plug-in keys whose absence from a run's identity means the built-in (the MLP,
# FashionMNIST's files): in the table they hold BUILT_IN, never an empty cell, which
# pairing would take for "does not apply" and match with every plug-in's runs
BUILT_IN_WHEN_ABSENT = ("model._target_", "data._target_")
BUILT_IN = "(built-in)"


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


def load_sweep(*sweep_dirs: str | Path) -> pd.DataFrame:
    """Tidy results (one row per run and epoch) of the sweep dirs, for notebooks."""
    return read_sweep([Path(d) for d in sweep_dirs]).results
