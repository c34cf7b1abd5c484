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
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from fashionbn.config import identity_problem, normalise_identity
from fashionbn.core.atomic import (  # noqa: F401 - part of the job-dir format
    WriteError,
    atomic_write,
    create_new,
    partial_debris,
    partial_name,
    sync_directory,
)
from fashionbn.core.records import (  # noqa: F401 - part of the job-dir format
    COMPLETE,
    DIAGNOSTIC_COLUMNS,
    DIVERGED,
    EVALUATED,
    METRIC_COLUMNS,
    PRECISE_COLUMNS,
    REQUIRED_COLUMNS,
    SUMMARISED,
)
from fashionbn.jobs.untrusted import (
    UnsafeEntry,
    parse_json,
    read_bytes,
    read_text,
    unreadable,
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
# the finished run's checkpoint, kept (a hard link) while the first epoch of its
# extension to more epochs is written: a kill then leaves the finished run
# (fashionbn.jobs.resume settle_extension)
FINISHED_CHECKPOINT_FILE = "checkpoint.finished.pt"
LOCK_FILE = ".lock"
# what a fresh start removes (with any debris of interrupted atomic writes)
RUN_FILES = (STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE, DIAGNOSTICS_FILE,
             FINISHED_CHECKPOINT_FILE)  # fmt: skip
# what a job dir's status.json can say
RUNNING, FAILED = "running", "failed"
STATUSES = (RUNNING, COMPLETE, DIVERGED, FAILED)


def _csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> str:
    """Write rows as a CSV file atomically; return its SHA-256 (status.json records
    it, so that a later change to the file is detected)."""
    data = _csv_bytes(columns, rows)
    atomic_write(path, lambda f: f.write(data), mode="wb")
    return hashlib.sha256(data).hexdigest()


def write_metrics(records: list[dict], job_dir: Path) -> str:
    """Write all epochs' records as `job_dir/metrics.csv`; return its SHA-256."""
    return _write_csv(Path(job_dir) / METRICS_FILE, METRIC_COLUMNS, records)


def metrics_digest(records: list[dict]) -> str:
    """The SHA-256 write_metrics(records) writes, without writing."""
    return hashlib.sha256(_csv_bytes(METRIC_COLUMNS, records)).hexdigest()


def write_diagnostics(rows: list[dict], job_dir: Path) -> str:
    """Write the diagnostics rows as `job_dir/diagnostics.csv`; return its SHA-256."""
    return _write_csv(Path(job_dir) / DIAGNOSTICS_FILE, DIAGNOSTIC_COLUMNS, rows)


def diagnostics_digest(rows: list[dict]) -> str:
    """The SHA-256 write_diagnostics(rows) writes, without writing."""
    return hashlib.sha256(_csv_bytes(DIAGNOSTIC_COLUMNS, rows)).hexdigest()


def read_checked(
    job_dir: Path,
    name: str,
    parse: Callable[[str], list],
    digest: Optional[str],
    epochs: Optional[int] = None,
) -> tuple[Optional[list], Optional[str]]:
    """(job_dir/name's rows, None), or (None, why it cannot be trusted): missing, not
    a regular file (fashionbn.jobs.untrusted), unreadable (`parse` raises
    ValueError), not the `epochs` rows status.json says, or changed since the run
    wrote it (its `digest`). The file is read once: the digest is of what is
    parsed."""
    try:
        data = read_bytes(job_dir, name)
    except FileNotFoundError:
        return None, f"there is no {name}"
    except (OSError, UnsafeEntry) as err:
        return None, unreadable(name, err)
    try:
        rows = parse(data.decode())
    except UnicodeDecodeError:
        return None, f"unreadable {name} (not UTF-8 text)"
    except ValueError as err:
        return None, str(err)
    if epochs is not None and len(rows) != epochs:
        return None, f"{name} has {len(rows)} epochs but {STATUS_FILE} says {epochs}"
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        return None, (
            f"{name} was changed after the run wrote it (its digest does not match "
            f"{STATUS_FILE})"
        )
    return rows, None


def _parse_csv(text: str, name: str) -> tuple[list[str], list[dict]]:
    """A CSV text's columns and rows (strings); ValueError naming the file if it
    cannot be parsed."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return reader.fieldnames or [], list(reader)
    except csv.Error as err:
        raise ValueError(f"unreadable {name} ({err})") from err


def _read_text(job_dir: Path, name: str) -> str:
    """A job-dir file's text; ValueError saying why it cannot be read."""
    try:
        return read_text(job_dir, name)
    except (OSError, UnsafeEntry) as err:
        raise ValueError(unreadable(name, err)) from None


def read_diagnostics(job_dir: Path) -> list[dict]:
    """diagnostics.csv as records; raises ValueError saying what is wrong with it."""
    return parse_diagnostics(_read_text(job_dir, DIAGNOSTICS_FILE))


def parse_diagnostics(text: str) -> list[dict]:
    """diagnostics.csv's text as records; ValueError saying what is wrong with it."""
    columns, rows = _parse_csv(text, DIAGNOSTICS_FILE)
    if columns != DIAGNOSTIC_COLUMNS:
        raise ValueError(
            f"{DIAGNOSTICS_FILE} has columns {columns}, expected {DIAGNOSTIC_COLUMNS}"
        )
    try:
        return [
            {"step": int(row["step"]), "epoch": int(row["epoch"]),
             "layer": str(row["layer"]), "quantity": str(row["quantity"]),
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
    when there is none. A status is only returned if every field it has is of the
    type fashionbn writes (status_problem); a missing format is 1."""
    try:
        status = parse_json(read_text(job_dir, STATUS_FILE))
    except FileNotFoundError:
        return None, None
    except UnsafeEntry as err:
        return None, str(err)
    except (OSError, ValueError) as err:
        return None, unreadable(STATUS_FILE, err)
    problem = status_problem(status)
    if problem:
        return None, f"{STATUS_FILE} {problem}"
    status.setdefault("format", 1)
    return status, None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digest(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _records(value: Any, fields: dict[str, Callable[[Any], bool]]) -> bool:
    """A list of dicts whose `fields` (those present) pass their checks and whose
    other values are plain."""
    return isinstance(value, list) and all(
        isinstance(item, dict)
        and all(isinstance(k, str) and _plain(v) for k, v in item.items())
        and all(check(item[k]) for k, check in fields.items() if k in item)
        for item in value
    )


# every optional field of status.json and what its value must be
STATUS_FIELDS: dict[str, Callable[[Any], bool]] = {
    "format": lambda v: _whole(v) and v >= 1,
    "metrics_sha256": _digest,
    "diagnostics_sha256": _digest,
    "data_sha256": _digest,
    "error": lambda v: isinstance(v, str),
    "execution": lambda v: _records(v, {}),
    "extensions": lambda v: _records(
        v,
        {
            "from_epochs": _whole,
            "to_epochs": _whole,
            "from_dir": lambda d: isinstance(d, str),
        },
    ),  # fmt: skip
}


def status_problem(status: Any) -> Optional[str]:
    """What is wrong with a parsed status.json ('holds a list, not a record', 'has
    format='3''), or None. Any of its fields may have been edited or damaged."""
    if not isinstance(status, dict):
        return f"holds a {type(status).__name__}, not a record"
    missing = [k for k in ("status", "epochs_done", "config") if k not in status]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(status["status"], str) or status["status"] not in STATUSES:
        return f"has an unknown status {status['status']!r}"
    if not _whole(status["epochs_done"]) or status["epochs_done"] < 0:
        return f"has epochs_done={status['epochs_done']!r}"
    for key, check in STATUS_FIELDS.items():
        if key in status and not check(status[key]):
            return f"has a damaged {key} ({status[key]!r:.60})"
    problem = identity_problem(status["config"])
    if problem:
        return f"has no usable config: {problem}"
    done, epochs = status["epochs_done"], normalise_identity(status["config"])["epochs"]
    if status["status"] == COMPLETE and done != epochs:
        return f"says complete after {done} epochs, but its config asks for {epochs}"
    if status["status"] == DIVERGED and not 1 <= done <= epochs:
        return f"says diverged after {done} epochs, of {epochs}"
    if done > epochs:
        return f"says {done} epochs are done, of the {epochs} its config asks for"
    return None


def read_metrics(job_dir: Path) -> list[dict]:
    """metrics.csv as records (`epoch` an int, every other column a float; an empty
    cell, e.g. val_acc without a validation split, is None). Raises ValueError saying
    what is wrong with the file."""
    return parse_metrics(_read_text(job_dir, METRICS_FILE))


def parse_metrics(text: str) -> list[dict]:
    """metrics.csv's text as records (see read_metrics)."""
    columns, rows = _parse_csv(text, METRICS_FILE)
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
    if key is None or not isinstance(text, str):  # a row longer or shorter than
        raise ValueError(f"{key}: {text!r}")  # the header
    if key == "epoch":
        return int(text)
    if text == "" and key not in REQUIRED_COLUMNS:
        return None
    return float(text)


@contextmanager
def shared_lock(job_dir: Path) -> Iterator[Optional[str]]:
    """job_dir's lock held shared within the block (no process can start writing the
    dir meanwhile; nothing is created). Yields None where it is held (or there is
    no `.lock`: nothing has trained there), else who holds it — its line ('pid N on
    host since ...'), 'a process' where it wrote none — or '' where `.lock` cannot
    be opened."""
    try:
        fd = os.open(job_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        yield None
        return
    except OSError:
        yield ""
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 1000, 0).decode(errors="replace").strip() or "a process"
            return
        yield None
    finally:
        os.close(fd)
