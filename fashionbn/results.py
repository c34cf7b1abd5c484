"""The files a run leaves in its job dir: the interface from training to aggregation.

A job dir holds Hydra's `.hydra/` (config.yaml, overrides.yaml), `metrics.csv` (one
row per finished epoch), `status.json` (running / complete / diverged / failed, and the
config the run computes) and `checkpoint.pt` (everything needed to continue after the
last finished epoch). Every file here is written to a temporary name and renamed into
place: a kill at any moment never leaves a half-written file that a later step trusts.
"""

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
]
METRICS_FILE = "metrics.csv"


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call write(file) on a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_metrics(records: list[dict], job_dir: Path) -> None:
    """Write all epochs' records as `job_dir/metrics.csv` (columns: METRIC_COLUMNS)."""

    def write(f: IO) -> None:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(records)

    atomic_write(Path(job_dir) / METRICS_FILE, write)


STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.pt"  # written and read by fashionbn.train only
# what a job dir's status.json can say
RUNNING, COMPLETE, DIVERGED, FAILED = "running", "complete", "diverged", "failed"


def write_status(job_dir: Path, status: str, config: dict, epochs_done: int, **extra):
    """Record the run's state and the config it computes, as `job_dir/status.json`."""
    record = {"status": status, "epochs_done": epochs_done, **extra, "config": config}
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write(Path(job_dir) / STATUS_FILE, lambda f: f.write(text))


def read_status(job_dir: Path) -> Optional[dict]:
    """The job dir's status.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(job_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(job_dir: Path) -> list[dict]:
    """metrics.csv as records: `epoch` an int, every other column a float."""
    with open(Path(job_dir) / METRICS_FILE, newline="") as f:
        return [
            {
                key: int(value) if key == "epoch" else float(value)
                for key, value in row.items()
            }
            for row in csv.DictReader(f)
        ]
