"""The files a run leaves in its job dir: the interface from training to aggregation.

A job dir holds Hydra's `.hydra/` and `run.log`, and fashionbn's own files:
- `metrics.csv`: one row per finished epoch (METRIC_COLUMNS: older formats have only
  REQUIRED_COLUMNS; later versions may add columns after these, never change these);
- `status.json`: running / complete / diverged / failed, the epochs done, the results
  format, the run's identity (the config that determines its numbers) and how it ran;
- `checkpoint.pt`: everything needed to continue after the last finished epoch, with
  its own identity and digest (fashionbn.jobs.checkpoint);
- `diagnostics.csv` (diagnostics=on): `step,epoch,layer,quantity,value`, tidy, the
  measurements of fashionbn.core.diagnostics up to the last finished epoch.
Every file is written to a temporary name and renamed into place: a kill at any moment
never leaves a half-written file that a later step trusts. A full or read-only disk is
reported as one line (WriteError), not as a library's traceback.
"""

import csv
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from fashionbn.core.atomic import (  # noqa: F401 - part of the job-dir format
    WriteError,
    atomic_write,
    partial_debris,
    partial_name,
    sync_directory,
)
from fashionbn.core.records import (  # noqa: F401 - part of the job-dir format
    COMPLETE,
    DIAGNOSTIC_COLUMNS,
    DIVERGED,
    METRIC_COLUMNS,
    PRECISE_COLUMNS,
    REQUIRED_COLUMNS,
)

# 1: fashionbn before results formats were recorded (no "format" in status.json);
# 2: status.json has format, execution and a normalised identity; checkpoint.pt carries
#    its identity and a digest;
# 3: metrics.csv has val_loss and val_acc (empty without a validation split).
RESULTS_FORMAT = 3

METRICS_FILE = "metrics.csv"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.pt"
DIAGNOSTICS_FILE = "diagnostics.csv"  # only with diagnostics=on
LOCK_FILE = ".lock"
# what a fresh start removes (with any debris of interrupted atomic writes)
RUN_FILES = (STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE, DIAGNOSTICS_FILE)
# what a job dir's status.json can say
RUNNING, FAILED = "running", "failed"
STATUSES = (RUNNING, COMPLETE, DIVERGED, FAILED)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> str:
    """Write rows as a CSV file atomically; return its SHA-256 (status.json records
    it, so that a later change to the file is detected)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    atomic_write(path, lambda f: f.write(data), mode="wb")
    return hashlib.sha256(data).hexdigest()


def write_metrics(records: list[dict], job_dir: Path) -> str:
    """Write all epochs' records as `job_dir/metrics.csv`; return its SHA-256."""
    return _write_csv(Path(job_dir) / METRICS_FILE, METRIC_COLUMNS, records)


def write_diagnostics(rows: list[dict], job_dir: Path) -> str:
    """Write the diagnostics rows as `job_dir/diagnostics.csv`; return its SHA-256."""
    return _write_csv(Path(job_dir) / DIAGNOSTICS_FILE, DIAGNOSTIC_COLUMNS, rows)


def read_checked(
    job_dir: Path,
    name: str,
    read: Callable[[Path], list],
    digest: Optional[str],
    epochs: Optional[int] = None,
) -> tuple[Optional[list], Optional[str]]:
    """(job_dir/name's rows, None), or (None, why it cannot be trusted): missing,
    unreadable (`read` raises ValueError), not the `epochs` rows status.json says, or
    changed since the run wrote it (its `digest`)."""
    path = Path(job_dir) / name
    if not path.is_file():
        return None, f"there is no {name}"
    try:
        rows = read(job_dir)
    except ValueError as err:
        return None, str(err)
    if epochs is not None and len(rows) != epochs:
        return None, f"{name} has {len(rows)} epochs but {STATUS_FILE} says {epochs}"
    if digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        return None, (
            f"{name} was changed after the run wrote it (its digest does not match "
            f"{STATUS_FILE})"
        )
    return rows, None


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """A CSV file's columns and rows (strings); ValueError naming the file if it
    cannot be read."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return reader.fieldnames or [], list(reader)
    except OSError as err:
        raise ValueError(f"unreadable {path.name} ({err.strerror})") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable {path.name} ({err})") from err


def read_diagnostics(job_dir: Path) -> list[dict]:
    """diagnostics.csv as records; raises ValueError saying what is wrong with it."""
    columns, rows = _read_csv(Path(job_dir) / DIAGNOSTICS_FILE)
    if columns != DIAGNOSTIC_COLUMNS:
        raise ValueError(
            f"{DIAGNOSTICS_FILE} has columns {columns}, expected {DIAGNOSTIC_COLUMNS}"
        )
    try:
        return [
            {"step": int(row["step"]), "epoch": int(row["epoch"]),
             "layer": row["layer"], "quantity": row["quantity"],
             "value": float(row["value"])}
            for row in rows
        ]  # fmt: skip
    except (TypeError, ValueError):
        raise ValueError(f"{DIAGNOSTICS_FILE} has a damaged row") from None


def write_status(
    job_dir: Path,
    status: str,
    identity: dict,
    epochs_done: int,
    execution: Optional[list[dict]] = None,
    **extra,
) -> None:
    """Record the run's state, identity and how it ran, as `job_dir/status.json`."""
    record = {
        "status": status,
        "epochs_done": epochs_done,
        **extra,
        "format": RESULTS_FORMAT,
        "execution": execution or [],
        "config": identity,
    }
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write(Path(job_dir) / STATUS_FILE, lambda f: f.write(text))


def read_status(job_dir: Path) -> tuple[Optional[dict], Optional[str]]:
    """(status.json as a dict, None), (None, what is wrong with it), or (None, None)
    when there is none. A status is only returned if it has every field it needs."""
    path = Path(job_dir) / STATUS_FILE
    if not path.exists():
        return None, None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{STATUS_FILE} is unreadable ({type(err).__name__}: {err})"
    if not isinstance(status, dict):
        return None, f"{STATUS_FILE} holds a {type(status).__name__}, not a record"
    missing = [k for k in ("status", "epochs_done", "config") if k not in status]
    if missing:
        return None, f"{STATUS_FILE} lacks {', '.join(missing)}"
    if status["status"] not in STATUSES:
        return None, f"{STATUS_FILE} has an unknown status {status['status']!r}"
    epochs_done = status["epochs_done"]
    if not isinstance(epochs_done, int) or epochs_done < 0:
        return None, f"{STATUS_FILE} has epochs_done={epochs_done!r}"
    if not isinstance(status["config"], dict) or not status["config"]:
        return None, f"{STATUS_FILE} has no config"
    status.setdefault("format", 1)
    return status, None


def read_metrics(job_dir: Path) -> list[dict]:
    """metrics.csv as records (`epoch` an int, every other column a float; an empty
    cell, e.g. val_acc without a validation split, is None). Raises ValueError saying
    what is wrong with the file."""
    columns, rows = _read_csv(Path(job_dir) / METRICS_FILE)
    if columns[: len(REQUIRED_COLUMNS)] != REQUIRED_COLUMNS:
        raise ValueError(
            f"{METRICS_FILE} has columns {columns}, expected {METRIC_COLUMNS}"
        )
    records = []
    for line, row in enumerate(rows, start=2):
        try:
            records.append({key: _value(key, text) for key, text in row.items()})
        except (TypeError, ValueError):
            raise ValueError(f"{METRICS_FILE} line {line} is damaged: {row}") from None
    if [r["epoch"] for r in records] != list(range(1, len(records) + 1)):
        raise ValueError(f"{METRICS_FILE} epochs are not 1..{len(records)}")
    return records


def _value(key: str, text: str) -> Optional[float]:
    """A cell's number; only columns a run may leave empty (val_*) may be empty."""
    if key == "epoch":
        return int(text)
    if text == "" and key not in REQUIRED_COLUMNS:
        return None
    return float(text)
