"""TensorBoard and MLflow sinks, fed the records metrics.csv (and diagnostics.csv) hold.

The job dir's files stay the source of truth: a sink is given each epoch's record after
the files are written, and on a (re)start it first catches up on what the tool lacks,
asking the tool itself (its events on disk, its metric history) what it already has —
so a resumed job continues the same TensorBoard run and MLflow run and never logs an
epoch twice. A sink that fails (store unreachable, disk full) logs one warning and is
dropped: training goes on and the csv files are written. Nothing here is imported with
logger=csv.
"""

import fcntl
import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from fashionbn.config import ConfigError, flatten
from fashionbn.jobs.files import (
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    METRIC_COLUMNS,
    METRICS_FILE,
    STATUS_FILE,
    atomic_write,
    partial_debris,
    partial_name,
)
from fashionbn.jobs.untrusted import UnsafeEntry, inside, read_json, read_text

log = logging.getLogger(__name__)

LOGGERS_FILE = "loggers.json"  # which MLflow run is this job's
JOB_TAG = "fashionbn.job_dir"  # an MLflow run's tag: the job dir it logs
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's files (events_dir)
SCALARS = [c for c in METRIC_COLUMNS if c != "epoch"]
EXTRAS = "pip install -e '.[loggers]' (make setup installs it)"


def hparam(value):
    """A value TensorBoard's HParams and MLflow's params can show."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def run_params(identity: dict, execution: dict) -> dict:
    """The run's flattened config (paths are not part of its identity), how it ran."""
    params = {key: hparam(value) for key, value in flatten(identity).items()}
    params.update({f"execution.{k}": hparam(v) for k, v in execution.items()})
    return params


def events_dir(job_dir: Path, log_root: Path, run_name: str) -> Path:
    """Where a job's TensorBoard events go: `<sweep>/tensorboard/<run name>/`, so that
    TensorBoard lists each run by what tells it apart (its dir name starts with the
    sweep's fixed overrides). Kept in the job dir's loggers.json (relative to the job
    dir, so a moved sweep keeps it); a job dir of an older fashionbn that holds events
    itself keeps them there. loggers.json is untrusted input and a fresh start
    removes the events in the dir it names, so a recorded dir is used only when it
    is this job's: the job dir itself, or a dir of the sweep's tensorboard/ whose
    OWNER_FILE names this job (one without it only when it is the dir this job would
    get now). UnsafeEntry when the dir the events would go to is reached through a
    symbolic link or is another job's (the sink then does not start)."""
    state = read_state(job_dir / LOGGERS_FILE)
    recorded = state.get("tensorboard_dir")
    board = log_root / "tensorboard"
    expected = board / run_name.replace("/", "%2F")  # one dir, whatever the name
    if board.is_symlink() or expected.is_symlink() or not inside(log_root, expected):
        raise UnsafeEntry(
            f"{board}: a symbolic link where TensorBoard's events go; nothing is "
            "written through one"
        )
    me = os.path.relpath(job_dir.resolve(), log_root.resolve())
    if isinstance(recorded, str) and recorded:
        directory = (job_dir / recorded).resolve()
        if directory == job_dir.resolve():
            return directory
        owner = events_owner(directory)
        if inside(board, directory) and (
            owner == me or (owner is None and directory == expected.resolve())
        ):
            return claimed(directory, me)
        log.warning(
            "%s: %s records tensorboard_dir=%r, which is not this job's events "
            "dir; not used (a fresh start would remove the events there)",
            job_dir, LOGGERS_FILE, recorded,
        )  # fmt: skip
    elif any(job_dir.glob(EVENTS_GLOB)):
        return job_dir
    if events_owner(expected) not in (None, me):
        raise UnsafeEntry(f"{expected} holds another job's TensorBoard events")
    directory = claimed(expected.resolve(), me)
    relative = os.path.relpath(directory, job_dir.resolve())
    write_state(job_dir / LOGGERS_FILE, {**state, "tensorboard_dir": relative})
    return directory


OWNER_FILE = ".fashionbn-job"  # in an events dir: the job dir (relative to the sweep)


def events_owner(directory: Path) -> Optional[str]:
    """The job an events dir says it belongs to (None: it says nothing)."""
    try:
        return read_text(directory, OWNER_FILE).strip() or None
    except (OSError, ValueError, UnsafeEntry):
        return None


def claimed(directory: Path, me: str) -> Path:
    """`directory`, made and marked as this job's events dir."""
    directory.mkdir(parents=True, exist_ok=True)
    if events_owner(directory) != me:
        atomic_write(directory / OWNER_FILE, lambda f: f.write(me + "\n"))
    return directory


class TensorBoardSink:
    """Event files in `<sweep>/tensorboard/<run name>/` (events_dir):
    `tensorboard --logdir <sweep>` shows one run per job, its distinguishing keys
    first, with per-epoch scalars, diagnostics and the HParams view."""

    name = "tensorboard"

    def __init__(self, directory: Path, params: dict, fresh: bool):
        try:
            from tensorboard.backend.event_processing.event_accumulator import (
                EventAccumulator,
            )
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as err:
            raise ConfigError(
                f"logger=tensorboard needs tensorboard: {EXTRAS}"
            ) from err
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:  # a run that starts again from epoch 1 is a new TensorBoard run
            for old in directory.glob(EVENTS_GLOB):
                if old.is_file() and not old.is_symlink():
                    old.unlink()
        accumulator = EventAccumulator(str(directory))
        accumulator.Reload()
        # per tag, the last step already on disk: a kill can come between two tags
        self.logged = {
            tag: max(event.step for event in accumulator.Scalars(tag))
            for tag in accumulator.Tags()["scalars"]
        }
        self.writer = SummaryWriter(log_dir=str(directory))
        try:
            has_hparams = bool(accumulator.PluginTagToContent("hparams"))
        except KeyError:  # no HParams in the dir yet
            has_hparams = False
        if not has_hparams:
            metrics = {tag: 0.0 for tag in SCALARS if tag != "seconds"}
            for summary in hparams(params, metrics):  # in this run, not a subfolder
                self.writer.file_writer.add_summary(summary)

    def log(self, records: list[dict], diagnostics: list[dict]) -> None:
        points = [
            (tag, record[tag], record["epoch"])
            for record in records
            for tag in SCALARS
            if record.get(tag) is not None
        ]
        points += [
            (f"diagnostics/{row['quantity']}/layer_{row['layer']}", row["value"],
             row["step"])
            for row in diagnostics
        ]  # fmt: skip
        for tag, value, step in points:
            if step > self.logged.get(tag, -1):  # only what is not there yet
                self.writer.add_scalar(tag, value, step)
                self.logged[tag] = step
        self.writer.flush()

    def finish(self, status: str, job_dir: Path) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow experiment per sweep dir, one run per job (named like its
    TensorBoard run: distinguishing keys first), on a
    real database: a SQLite file next to the sweep unless logger.tracking_uri says
    otherwise. The run id lives in the job dir's loggers.json, so a resumed job
    continues its run; SQLite writes from parallel jobs take turns (a file lock)."""

    name = "mlflow"

    def __init__(
        self,
        job_dir: Path,
        params: dict,
        fresh: bool,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path,
        run_name: str,
        own_store: bool = False,
    ):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ConfigError(
                f"logger=mlflow needs mlflow-skinny, sqlalchemy and alembic: {EXTRAS}"
            ) from err
        self.Metric = Metric
        self.lock_path = sqlite_lock(tracking_uri)
        self.state_path = job_dir / LOGGERS_FILE
        self.job_dir = str(job_dir.resolve())
        state = read_state(self.state_path)
        with self.turn():
            create_sqlite_store(tracking_uri, MlflowClient)
            self.client = MlflowClient(tracking_uri=tracking_uri)
            # loggers.json may come with a copied dir: a run is this job's only when
            # the run says so (its tag), never deleted or continued otherwise
            old_run = state.get("mlflow_run_id")
            old_run = old_run if self._owned(old_run) else None
            if fresh and old_run:  # the job starts again: its old run goes
                self.client.delete_run(old_run)
                old_run = None
            self.run_id = old_run
            if self.run_id is None:
                found = self.client.get_experiment_by_name(experiment)
                if found is not None and own_store:
                    outside_sweep(found.artifact_location, artifact_root.parent)
                experiment_id = (
                    found.experiment_id
                    if found is not None
                    else self.client.create_experiment(
                        experiment, artifact_location=str(artifact_root)
                    )
                )
                run = self.client.create_run(
                    experiment_id, run_name=run_name, tags={JOB_TAG: self.job_dir}
                )
                self.run_id = run.info.run_id
                params_ = [Param(k, str(v)) for k, v in params.items()]
                for start in range(0, len(params_), 100):
                    batch = params_[start : start + 100]
                    self.client.log_batch(self.run_id, params=batch)
                write_state(self.state_path, {**state, "mlflow_run_id": self.run_id})
            else:
                if own_store:
                    where = self.client.get_run(self.run_id).info.artifact_uri
                    outside_sweep(where, artifact_root.parent)
                self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "test_acc")
        self.epochs = max((m.step for m in history), default=0)

    def _owned(self, run_id) -> bool:
        """Whether `run_id` is an active run of this store made for this job dir."""
        if not isinstance(run_id, str) or not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - gone, or another store's
            return False
        return (
            run.info.lifecycle_stage == "active"
            and run.data.tags.get(JOB_TAG) == self.job_dir
        )

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - gone, deleted, or another store
            return False

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the SQLite store's lock (parallel jobs write one at a time)."""
        if self.lock_path is None:
            yield
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW  # never through a link
        fd = os.open(self.lock_path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def log(self, records: list[dict], diagnostics: list[dict]) -> None:
        now = int(time.time() * 1000)
        metrics = [
            self.Metric(tag, float(record[tag]), now, record["epoch"])
            for record in records[self.epochs :]
            for tag in SCALARS
            if record.get(tag) is not None
        ]
        if metrics:
            with self.turn():
                self.client.log_batch(self.run_id, metrics=metrics)
        self.epochs = len(records)

    def finish(self, status: str, job_dir: Path) -> None:
        files = [
            job_dir / name for name in (METRICS_FILE, STATUS_FILE, DIAGNOSTICS_FILE)
        ]
        with self.turn():
            for path in files:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_tag(self.run_id, "fashionbn.status", status)
            finished = "FINISHED" if status in (COMPLETE, DIVERGED) else "FAILED"
            self.client.set_terminated(self.run_id, finished)


def outside_sweep(location: Optional[str], sweep: Path) -> None:
    """ValueError when the sweep's own MLflow store keeps artifacts outside the sweep
    dir (its mlflow.db was copied from another sweep, or made to point elsewhere):
    nothing is written there."""
    local = Path((location or "").removeprefix("file://"))
    if not inside(sweep, local):
        raise ValueError(
            f"the sweep's own store keeps artifacts in {location}, outside the sweep "
            "dir (a copied mlflow.db?); nothing is written there"
        )


SQLITE = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The file of a sqlite:/// store (None for any other store)."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri[len(SQLITE) :])


def sqlite_lock(tracking_uri: str) -> Optional[Path]:
    """The lock file beside a sqlite:/// store (None for any other store)."""
    store = sqlite_path(tracking_uri)
    return None if store is None else store.with_name(store.name + ".lock")


def create_sqlite_store(tracking_uri: str, client_class) -> None:
    """Create a sqlite:/// store that does not exist yet aside, schema migrated and
    all, then rename it into place (the caller holds the store's lock): a kill during
    the ~1.5 s of migrations leaves debris beside the store, never a half-migrated
    store that every later job fails to open ("table ... already exists")."""
    store = sqlite_path(tracking_uri)
    if store is None or store.exists():
        return
    for debris in partial_debris(store.parent, store.name):
        debris.unlink(missing_ok=True)  # a creator killed earlier (we hold the lock)
    # a name never used before: MLflow caches engines per URI, and one left from a
    # failed creation in this process would still point at the removed file
    partial = partial_name(store)
    aside = partial.with_name(f"{partial.name}-{uuid.uuid4().hex[:8]}")
    client_class(tracking_uri=f"{SQLITE}{aside}").search_experiments()  # migrates
    os.replace(aside, store)


# how long a tracking server may take to answer the probe before a sweep goes on
# without it (MLflow's own HTTP retries take ~4 minutes per job)
PROBE_SECONDS = 5.0
_unreachable: dict[str, str] = {}  # tracking URI -> why, for this process


def unreachable(tracking_uri: str) -> Optional[str]:
    """Why an http(s) tracking server cannot be used, probed once per process (the
    basic launcher runs a whole sweep in one) with a short timeout; None if it
    answered or the store is not a server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    if tracking_uri not in _unreachable:
        url = tracking_uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(url, timeout=PROBE_SECONDS).close()
            _unreachable[tracking_uri] = ""
        except urllib.error.HTTPError:
            _unreachable[tracking_uri] = ""  # it answered: a server is there
        except (OSError, ValueError) as err:  # refused, timed out, no such host
            reason = getattr(err, "reason", err)
            _unreachable[tracking_uri] = f"{type(reason).__name__}: {reason}"
    return _unreachable[tracking_uri] or None


def read_state(path: Path) -> dict:
    """loggers.json as a dict ({} when missing, damaged or not a regular file)."""
    try:
        state = read_json(path.parent, path.name)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError, UnsafeEntry):
        return {}


def write_state(path: Path, state: dict) -> None:
    text = json.dumps(state, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text))


class Loggers:
    """The configured sinks of one job. Every call is guarded: a sink that raises
    logs one warning and is dropped, and the run goes on."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def _each(self, action: str, call) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as err:  # noqa: BLE001 - a logger never costs a result
                self.sinks.remove(sink)
                log.warning(
                    "logger %s failed while it %s (%s: %s); training goes on and the "
                    "csv files are written, but %s gets nothing more from this run",
                    sink.name, action, type(err).__name__, err, sink.name,
                )  # fmt: skip

    def log(self, records: list[dict], diagnostics: list[dict]) -> None:
        """Log whatever the sinks lack of these records (all epochs so far)."""
        self._each("logged", lambda sink: sink.log(records, diagnostics))

    def finish(self, status: str, job_dir: Path) -> None:
        self._each("finished", lambda sink: sink.finish(status, job_dir))


def make_loggers(
    logger_cfg,
    job_dir: Path,
    log_root: Path,
    identity: dict,
    execution: dict,
    fresh: bool,
    run_name: Optional[str] = None,
) -> Optional[Loggers]:
    """The sinks logger_cfg asks for (None for logger=csv). A missing package is an
    error before training; a sink that cannot start only warns."""
    if not (logger_cfg.tensorboard or logger_cfg.mlflow):
        return None
    params = run_params(identity, execution)
    run_name = run_name or job_dir.name
    loggers = Loggers([])
    starts = []
    if logger_cfg.tensorboard:
        starts.append(
            (
                "tensorboard",
                lambda: TensorBoardSink(
                    events_dir(job_dir, log_root, run_name), params, fresh
                ),
            )
        )
    uri = logger_cfg.tracking_uri or f"{SQLITE}{log_root.resolve()}/mlflow.db"
    probed = uri in _unreachable
    why = unreachable(uri) if logger_cfg.mlflow else None
    if why and not probed:  # one line for the sweep: later jobs are told quietly
        log.warning(
            "logger mlflow is off for this sweep: the tracking server %s did not "
            "answer within %g s (%s); training goes on and the csv files are "
            "written, without mlflow",
            uri, PROBE_SECONDS, why,
        )  # fmt: skip
    elif why:
        log.info("logger mlflow stays off: %s did not answer earlier (%s)", uri, why)
    elif logger_cfg.mlflow:
        if logger_cfg.tracking_uri is None:  # the sweep's own store: no links
            for name in ("mlflow.db", "mlflow.db.lock", "mlartifacts"):
                path = log_root / name
                if path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
                    log.warning(
                        "logger mlflow could not start (%s is a link: nothing is "
                        "written through one); training goes on and the csv files "
                        "are written, without mlflow",
                        log_root / name,
                    )  # fmt: skip
                    return _started(loggers, starts)
        experiment = logger_cfg.experiment or str(log_root.resolve())
        artifacts = log_root.resolve() / "mlartifacts"
        starts.append(
            (
                "mlflow",
                lambda: MLflowSink(
                    job_dir,
                    params,
                    fresh,
                    uri,
                    experiment,
                    artifacts,
                    run_name,
                    own_store=logger_cfg.tracking_uri is None,
                ),
            )  # fmt: skip
        )
    return _started(loggers, starts)


def _started(loggers: Loggers, starts: list) -> Loggers:
    """`loggers` with each sink of `starts` that could start (a missing package is
    an error; any other failure a warning)."""
    for name, start in starts:
        try:
            loggers.sinks.append(start())
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - a logger never costs a result
            log.warning(
                "logger %s could not start (%s: %s); training goes on and the csv "
                "files are written, without %s",
                name, type(err).__name__, err, name,
            )  # fmt: skip
    return loggers
