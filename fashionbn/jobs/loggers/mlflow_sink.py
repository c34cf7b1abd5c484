"""MLflow: one experiment per sweep dir, one run per job (tagged with its job dir),
on a SQLite store beside the sweep unless logger.tracking_uri names another; a store
that does not answer is probed once per process and left out."""

import fcntl
import os
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from fashionbn.config import ConfigError
from fashionbn.jobs.files import (
    COMPLETE,
    DIAGNOSTICS_FILE,
    DIVERGED,
    METRICS_FILE,
    STATUS_FILE,
    partial_debris,
    partial_name,
)
from fashionbn.jobs.loggers.common import (
    EXTRAS,
    LOGGERS_FILE,
    SCALARS,
    read_state,
    write_state,
)
from fashionbn.jobs.untrusted import inside

JOB_TAG = "fashionbn.job_dir"  # an MLflow run's tag: the job dir it logs


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


def was_probed(tracking_uri: str) -> bool:
    """Whether this process has probed `tracking_uri` already."""
    return tracking_uri in _unreachable


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
