"""What every sink shares: the job's loggers.json (which MLflow run, which events dir
is this job's), the scalars a sink is given, and how a config value becomes a param."""

import json
from pathlib import Path

from fashionbn.config import flatten
from fashionbn.jobs.files import METRIC_COLUMNS, atomic_write
from fashionbn.jobs.untrusted import UnsafeEntry, read_json

LOGGERS_FILE = "loggers.json"  # which MLflow run is this job's
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
