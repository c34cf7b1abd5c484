"""The files a run leaves in its job dir: the interface from training to aggregation.

A job dir holds Hydra's `.hydra/` (config.yaml, overrides.yaml) and `metrics.csv`, one
row per finished epoch. Every file here is written to a temporary name and renamed into
place: a kill at any moment never leaves a half-written file that a later step trusts.
"""

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
