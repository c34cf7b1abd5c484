"""The files a run leaves in its job dir: the interface from training to aggregation.

A job dir holds Hydra's `.hydra/` and `run.log`, and fashionbn's own files:
- `metrics.csv`: one row per finished epoch (METRIC_COLUMNS: older formats have only
  REQUIRED_COLUMNS; later versions may add columns after these, never change these);
- `status.json`: running / complete / diverged / failed, the epochs done, the results
  format, the run's identity (the config that determines its numbers) and how it ran;
- `checkpoint.pt`: everything needed to continue after the last finished epoch, with
  its own identity and digest (fashionbn.checkpoint);
- `diagnostics.csv` (diagnostics=on): `step,epoch,layer,quantity,value`, tidy, the
  measurements of fashionbn.diagnostics up to the last finished epoch.
Every file is written to a temporary name and renamed into place: a kill at any moment
never leaves a half-written file that a later step trusts. A full or read-only disk is
reported as one line (WriteError), not as a library's traceback.
"""

import csv
import errno
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional

from fashionbn.config import FashionbnError

# 1: fashionbn before results formats were recorded (no "format" in status.json);
# 2: status.json has format, execution and a normalised identity; checkpoint.pt carries
#    its identity and a digest;
# 3: metrics.csv has val_loss and val_acc (empty without a validation split).
RESULTS_FORMAT = 3

# every results format has these, in this order
REQUIRED_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
]
# evaluation with precise BatchNorm statistics (fashionbn.precise_bn)
PRECISE_COLUMNS = ["val_loss_precise", "val_acc_precise", "test_loss_precise",
                   "test_acc_precise"]  # fmt: skip
# format 3: val_loss and val_acc (empty without a validation split), then the four
# *_precise columns (empty unless precise_bn=true and the model has BatchNorm; files
# written before they existed end at val_acc and read as empty)
METRIC_COLUMNS = [*REQUIRED_COLUMNS, "val_loss", "val_acc", *PRECISE_COLUMNS]
METRICS_FILE = "metrics.csv"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.pt"
DIAGNOSTICS_FILE = "diagnostics.csv"  # only with diagnostics=on
DIAGNOSTIC_COLUMNS = ["step", "epoch", "layer", "quantity", "value"]
LOCK_FILE = ".lock"
# what a fresh start removes (with any debris of interrupted atomic writes)
RUN_FILES = (STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE, DIAGNOSTICS_FILE)
# what a job dir's status.json can say
RUNNING, COMPLETE, DIVERGED, FAILED = "running", "complete", "diverged", "failed"
STATUSES = (RUNNING, COMPLETE, DIVERGED, FAILED)
# errors that mean "this disk cannot take the file", not "the data is bad"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(FashionbnError):
    """A file could not be written (disk full, read-only, no permission)."""


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call write(file) on a temporary file next to `path`, then rename it to `path`.

    The data is flushed to the disk (fsync) before the rename, and the rename itself
    after it (the directory's fsync): on a network filesystem (SLURM clusters) or
    after a power cut, `path` then holds either the old file or the whole new one,
    never a renamed but still empty one."""
    path = Path(path)
    partial = partial_name(path)
    try:
        with open(partial, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        sync_directory(path.parent)
    except OSError as err:
        if err.errno in _DISK_ERRNOS:
            reason = (err.strerror or str(err)).lower()
            raise WriteError(f"cannot write {path}: {reason}") from err
        raise
    finally:
        partial.unlink(missing_ok=True)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename into it is on the disk; best effort (not
    every filesystem can open or sync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_name(path: Path) -> Path:
    """The temporary name atomic_write uses for `path` in this process."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


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


def read_diagnostics(job_dir: Path) -> list[dict]:
    """diagnostics.csv as records; raises ValueError saying what is wrong with it."""
    path = Path(job_dir) / DIAGNOSTICS_FILE
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns, rows = reader.fieldnames or [], list(reader)
    except OSError as err:
        raise ValueError(f"unreadable {DIAGNOSTICS_FILE} ({err.strerror})") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable {DIAGNOSTICS_FILE} ({err})") from err
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
    path = Path(job_dir) / METRICS_FILE
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except OSError as err:
        raise ValueError(f"unreadable {METRICS_FILE} ({err.strerror})") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable {METRICS_FILE} ({err})") from err
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
