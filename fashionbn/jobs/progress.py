"""How far a sweep and a run are: `job k/N`, elapsed, an estimate of the time left;
a bar within each epoch when stderr is a terminal; and the name a run goes by in
TensorBoard and MLflow, with what tells it apart from the sweep's other runs first.

A Hydra callback (conf/config.yaml: hydra.callbacks.progress) counts the sweep's jobs
and notes which keys it sweeps when the sweep starts, and hands both to every job in
environment variables, which worker processes (joblib, submitit, SLURM) inherit.
Nothing here writes to a job dir or touches training: it only logs.
"""

import logging
import os
import sys
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

JOBS_VAR = "FASHIONBN_SWEEP_JOBS"  # how many jobs the sweep has
START_VAR = "FASHIONBN_SWEEP_START"  # when it started (time.time())
SWEPT_VAR = "FASHIONBN_SWEPT_KEYS"  # the keys it sweeps, comma-separated, in order
# without a sweep to ask: the keys that most often tell runs apart
USUAL_KEYS = ("model", "seed", "optim.lr", "optim")


def sweep_jobs(params: dict, task_overrides: list[str]) -> tuple[int, list[str]]:
    """(number of jobs, swept keys) of a basic-sweeper sweep: the preset's
    hydra.sweeper.params, then the command line's overrides (a later one of a key
    wins, as in Hydra's basic sweeper); the jobs are the product of the swept
    values. ValueError for a sweep the basic sweeper cannot run (an interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in params.items()]
    overrides = OverridesParser.create().parse_overrides([*arguments, *task_overrides])
    last = {o.get_key_element(): o for o in overrides}
    jobs, swept = 1, []
    for key, override in last.items():
        if not override.is_sweep_override():
            continue
        if not override.is_discrete_sweep():
            raise ValueError(f"{key}: not a list of values")
        jobs *= len(list(override.sweep_string_iterator()))
        swept.append(key)
    return jobs, swept


class SweepProgress(Callback):
    """Counts a multirun's jobs when it starts (see the module's docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[START_VAR] = repr(time.time())
        try:
            params = dict(config.hydra.sweeper.get("params") or {})
            jobs, swept = sweep_jobs(params, list(config.hydra.overrides.task))
        except Exception as err:  # noqa: BLE001 - progress never stops a sweep
            log.debug("cannot count the sweep's jobs: %s", err)
            os.environ.pop(JOBS_VAR, None)
            return
        os.environ[JOBS_VAR] = str(jobs)
        os.environ[SWEPT_VAR] = ",".join(swept)
        log.info("sweep of %d jobs (sweeping %s)", jobs, ", ".join(swept) or "nothing")


def duration(seconds: float) -> str:
    """1:02:03, 2:03 or 0:05: hours only when there are any."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def sweep_line(
    job_index: int,
    finished: bool,
    now: Optional[float] = None,
    left: Optional[float] = None,
    word: str = "done",
) -> str:
    """`job k/N` (k counts from 1), the sweep's elapsed time and, once a job has
    finished (`word`: done, skipped, failed), about how long the rest take: `left`
    seconds when the caller knows better (cohorts), else at the rate of jobs so far;
    '' outside a sweep (or one whose jobs could not be counted: then just `job
    k`)."""
    start = os.environ.get(START_VAR)
    if start is None:
        return ""
    k, total = job_index + 1, os.environ.get(JOBS_VAR)
    elapsed = (now if now is not None else time.time()) - float(start)
    line = f"job {k}/{total}" if total else f"job {k}"
    line += f"{' ' + word if finished else ''}, {duration(elapsed)} elapsed"
    if finished and left is not None:
        line += f", about {duration(left)} left" if left > 0 else ""
    elif finished and total and k < int(total):
        # jobs finish in about their order, also in parallel: the rate so far holds
        line += f", about {duration(elapsed / k * (int(total) - k))} left"
    return line


class CohortProgress:
    """`job k/N` lines for the jobs of a batched sweep (hydra/launcher=batched): a
    job's line when its cohort starts, and when it ends (done, skipped, failed)
    with the time left, estimated from the run-epochs still to train (cohorts to
    come included) at the rate of those trained so far."""

    def __init__(self, epochs: dict[int, int]):
        self.left = dict(epochs)  # id(job) -> its run-epochs still to train
        self.trained = 0  # run-epochs trained so far
        self.since: Optional[float] = None  # when the first cohort started

    def starts_at(self, job: Any, epochs_done: int) -> None:
        """The job resumes after `epochs_done` epochs: less is left."""
        self.left[id(job)] = max(0, job.run.epochs - epochs_done)

    def started(self, job: Any) -> None:
        if self.since is None:
            self.since = time.time()
        line = sweep_line(job.job_num, False)
        if line:
            log.info("%s: %s", line, job.name)

    def epoch(self, job: Any) -> None:
        self.trained += 1
        self.left[id(job)] = max(0, self.left.get(id(job), 1) - 1)

    def done(self, job: Any, word: str = "done") -> None:
        self.left[id(job)] = 0
        line = sweep_line(job.job_num, True, left=self.time_left(), word=word)
        if line:
            log.info("%s: %s", line, job.name)

    def time_left(self) -> Optional[float]:
        """Seconds the run-epochs still to train take at the rate so far (None
        before any was trained; 0 when none is left)."""
        left = sum(self.left.values())
        if not left:
            return 0.0
        if not self.trained or self.since is None:
            return None
        return (time.time() - self.since) / self.trained * left


def run_name(overrides: list[str], swept: Optional[list[str]] = None) -> str:
    """A run's name for TensorBoard and MLflow: its overrides (key=value, those that
    name its job dir), the swept keys first in the sweep's order, then the rest
    sorted; outside a sweep the usual distinguishing keys (model, seed, lr) first."""
    if swept is None:
        known = os.environ.get(SWEPT_VAR)
        swept = known.split(",") if known else list(USUAL_KEYS)
    keyed = {item.split("=", 1)[0].lstrip("+~"): item for item in overrides}
    first = [keyed.pop(key) for key in swept if key in keyed]
    return ",".join([*first, *(keyed[key] for key in sorted(keyed))])


class EpochBar:
    """A progress bar over one epoch's steps (tqdm), on stderr only when it is a
    terminal; elsewhere (files, SLURM) nothing: the per-epoch log lines say enough."""

    def __init__(
        self, steps_per_epoch: int, epochs_done: int, enabled: Optional[bool] = None
    ):
        self.steps = steps_per_epoch
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.epoch = epochs_done  # the last finished epoch

    def step(self) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {self.epoch + 1}",
                            unit="step", leave=False, file=sys.stderr)  # fmt: skip
        self.bar.update()

    def end_epoch(self, epoch: int) -> None:
        """Close the epoch's bar (before its log line); the next step opens one."""
        self.epoch = epoch
        if self.bar is not None:
            self.bar.close()
            self.bar = None
