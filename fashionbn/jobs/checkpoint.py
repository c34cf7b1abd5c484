"""checkpoint.pt: everything needed to continue a run, carrying its own identity and a
digest of its contents, so that a damaged, changed or foreign checkpoint is detected and
never trusted.

The file is a magic line, one line of JSON header (results format, status, epochs,
identity, size and SHA-256 of the rest) and the torch-serialised state
(fashionbn.core.train training_state() plus the finished epochs' records).
`head -2 checkpoint.pt` shows what
it holds.
"""

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from fashionbn.jobs.files import CHECKPOINT_FILE, RESULTS_FORMAT, atomic_write

CHECKPOINT_MAGIC = b"fashionbn checkpoint\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Checkpoint:
    identity: dict
    status: str  # RUNNING, COMPLETE or DIVERGED after its last epoch
    records: list[dict]
    state: dict  # fashionbn.core.train.training_state()


def save_checkpoint(job_dir: Path, checkpoint: Checkpoint) -> None:
    """Write job_dir/checkpoint.pt atomically."""
    buffer = io.BytesIO()
    torch.save({"records": checkpoint.records, **checkpoint.state}, buffer)
    payload = buffer.getvalue()
    header = {
        "format": RESULTS_FORMAT,
        "status": checkpoint.status,
        "epochs": len(checkpoint.records),
        "bytes": len(payload),
        "sha256": sha256(payload),
        "identity": checkpoint.identity,
    }
    data = CHECKPOINT_MAGIC + json.dumps(header).encode() + b"\n" + payload
    atomic_write(job_dir / CHECKPOINT_FILE, lambda f: f.write(data), mode="wb")


def load_checkpoint(job_dir: Path) -> tuple[Optional[Checkpoint], Optional[str]]:
    """(the verified checkpoint, None) or (None, what is wrong with it)."""
    path = job_dir / CHECKPOINT_FILE
    if not path.exists():
        return None, f"there is no {CHECKPOINT_FILE}"
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"{CHECKPOINT_FILE} is unreadable ({err.strerror})"
    if not raw.startswith(CHECKPOINT_MAGIC):
        return None, (
            f"{CHECKPOINT_FILE} is not a checkpoint of this fashionbn "
            "(damaged, or written by an older version)"
        )
    header_line, _, payload = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
    try:
        header = json.loads(header_line)
        expected_bytes, digest = header["bytes"], header["sha256"]
        identity, status, version = (
            header["identity"],
            header["status"],
            header["format"],
        )
    except (ValueError, TypeError, KeyError):
        return None, f"{CHECKPOINT_FILE} has a damaged header"
    if version != RESULTS_FORMAT:
        return None, (
            f"{CHECKPOINT_FILE} was written by another fashionbn (results format "
            f"{version}; this version writes {RESULTS_FORMAT})"
        )
    if len(payload) != expected_bytes:
        return None, (
            f"{CHECKPOINT_FILE} is truncated or damaged ({len(payload)} of "
            f"{expected_bytes} bytes)"
        )
    if sha256(payload) != digest:
        return None, f"{CHECKPOINT_FILE} does not match its digest (changed or damaged)"
    try:  # tensors and plain values only: a digest detects damage, not tampering,
        # so a checkpoint copied from someone else must never run pickle
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        records = state.pop("records")
    except pickle.UnpicklingError:
        return None, (
            f"{CHECKPOINT_FILE} holds more than tensors and plain values (written by "
            "an older fashionbn, or not by fashionbn); it is not loaded, since "
            "loading it would run code from the file"
        )
    except Exception as err:  # noqa: BLE001 - any failure means: not usable
        return None, f"{CHECKPOINT_FILE} cannot be loaded ({type(err).__name__})"
    if [r.get("epoch") for r in records] != list(range(1, len(records) + 1)):
        return None, f"{CHECKPOINT_FILE} holds inconsistent epochs"
    return Checkpoint(identity, status, records, state), None
