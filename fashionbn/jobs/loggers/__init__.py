"""TensorBoard and MLflow sinks (tensorboard_sink.py, mlflow_sink.py; what they share
in common.py), fed the records metrics.csv (and diagnostics.csv) hold.

The job dir's files stay the source of truth: a sink is given each epoch's record after
the files are written, and on a (re)start it first catches up on what the tool lacks,
asking the tool itself (its events on disk, its metric history) what it already has —
so a resumed job continues the same TensorBoard run and MLflow run and never logs an
epoch twice. A sink that fails (store unreachable, disk full) logs one warning and is
dropped: training goes on and the csv files are written. Nothing here is imported with
logger=csv.

Imports: config, jobs.files, jobs.untrusted; tensorboard and mlflow only inside a
sink's start.
"""

import logging
from pathlib import Path
from typing import Optional

from fashionbn.config import ConfigError
from fashionbn.jobs.loggers import mlflow_sink
from fashionbn.jobs.loggers.common import LOGGERS_FILE, run_params
from fashionbn.jobs.loggers.mlflow_sink import SQLITE, MLflowSink
from fashionbn.jobs.loggers.tensorboard_sink import TensorBoardSink, events_dir

__all__ = ["LOGGERS_FILE", "Loggers", "MLflowSink", "events_dir", "make_loggers"]

log = logging.getLogger(__name__)


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
    probed = mlflow_sink.was_probed(uri)
    why = mlflow_sink.unreachable(uri) if logger_cfg.mlflow else None
    if why and not probed:  # one line for the sweep: later jobs are told quietly
        log.warning(
            "logger mlflow is off for this sweep: the tracking server %s did not "
            "answer within %g s (%s); training goes on and the csv files are "
            "written, without mlflow",
            uri, mlflow_sink.PROBE_SECONDS, why,
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
