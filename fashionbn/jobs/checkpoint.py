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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from fashionbn.config import identity_problem
from fashionbn.jobs.files import (
    CHECKPOINT_FILE,
    COMPLETE,
    DIVERGED,
    RESULTS_FORMAT,
    RUNNING,
    STATUS_FIELDS,
    atomic_write,
)
from fashionbn.jobs.untrusted import UnsafeEntry, parse_json, read_bytes, unreadable

CHECKPOINT_MAGIC = b"fashionbn checkpoint\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Checkpoint:
    identity: dict
    status: str  # RUNNING, COMPLETE or DIVERGED after its last epoch
    records: list[dict]
    state: dict  # fashionbn.core.train.training_state()
    # what the run trained on (fashionbn.core.data data_digest); None in checkpoints
    # of a fashionbn before it was recorded here
    data_sha256: Optional[str] = None
    # the run's extensions so far (status.json's), so that a run whose status.json
    # is lost keeps them
    extensions: list[dict] = field(default_factory=list)


def save_checkpoint(
    job_dir: Path, checkpoint: Checkpoint, name: str = CHECKPOINT_FILE
) -> None:
    """Write job_dir/checkpoint.pt (or `name`) atomically."""
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
        "data_sha256": checkpoint.data_sha256,
        "extensions": checkpoint.extensions,
    }
    data = CHECKPOINT_MAGIC + json.dumps(header).encode() + b"\n" + payload
    atomic_write(job_dir / name, lambda f: f.write(data), mode="wb")


def header_problem(header: Any) -> Optional[str]:
    """What is wrong with a checkpoint's parsed JSON header, or None."""
    if not isinstance(header, dict):
        return "a damaged header"
    counts = [header.get(k) for k in ("format", "epochs", "bytes")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
               for n in counts):  # fmt: skip
        return "a damaged header"
    if not isinstance(header.get("sha256"), str):
        return "a damaged header"
    if header.get("status") not in (RUNNING, COMPLETE, DIVERGED):
        return f"a damaged header (status {header.get('status')!r})"
    for key in ("data_sha256", "extensions"):
        if header.get(key) is not None and not STATUS_FIELDS[key](header[key]):
            return f"a damaged header ({key})"
    problem = identity_problem(header.get("identity"))
    return f"a header that {problem}" if problem else None


def state_problem(state: Any, epochs: int) -> Optional[str]:
    """What is wrong with a checkpoint's loaded payload, or None: the records of
    `epochs` epochs (1, 2, ...; numbers or empty) and the pieces of a training
    state (fashionbn.core.train training_state)."""
    if not isinstance(state, dict):
        return "no training state"
    records = state.get("records")
    if not isinstance(records, list) or len(records) != epochs:
        return f"not the {epochs} epochs its header says"
    for epoch, record in enumerate(records, start=1):
        if not isinstance(record, dict) or record.get("epoch") != epoch:
            return "inconsistent epochs"
        if not all(
            isinstance(k, str) and (v is None or isinstance(v, (int, float)))
            for k, v in record.items()
        ):
            return f"a damaged record of epoch {epoch}"
    kinds = {"model": dict, "optimizer": dict, "generator": torch.Tensor,
             "torch": torch.Tensor, "cuda": list, "numpy": (tuple, list),
             "python": (tuple, list)}  # fmt: skip
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind):
            return f"a damaged training state ({key})"
    return None


def load_checkpoint(
    job_dir: Path, name: str = CHECKPOINT_FILE
) -> tuple[Optional[Checkpoint], Optional[str]]:
    """(the verified checkpoint, None) or (None, what is wrong with it). The file is
    read as untrusted input: a regular file (fashionbn.jobs.untrusted), its digest
    checked, every header field type-checked, loaded without pickle."""
    try:
        raw = read_bytes(job_dir, name)
    except FileNotFoundError:
        return None, f"there is no {name}"
    except (OSError, UnsafeEntry) as err:
        return None, unreadable(name, err)
    if not raw.startswith(CHECKPOINT_MAGIC):
        return None, (
            f"{name} is not a checkpoint of this fashionbn "
            "(damaged, or written by an older version)"
        )
    header_line, _, payload = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
    try:
        header = parse_json(header_line)
    except ValueError:
        return None, f"{name} has a damaged header"
    if isinstance(header, dict) and header.get("format") != RESULTS_FORMAT:
        return None, (
            f"{name} was written by another fashionbn (results format "
            f"{header.get('format')!r}; this version writes {RESULTS_FORMAT})"
        )
    problem = header_problem(header)
    if problem:
        return None, f"{name} has {problem}"
    if len(payload) != header["bytes"]:
        return None, (
            f"{name} is truncated or damaged ({len(payload)} of "
            f"{header['bytes']} bytes)"
        )
    if sha256(payload) != header["sha256"]:
        return None, f"{name} does not match its digest (changed or damaged)"
    try:  # tensors and plain values only: a digest detects damage, not tampering,
        # so a checkpoint copied from someone else must never run pickle
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None, (
            f"{name} holds more than tensors and plain values (written by "
            "an older fashionbn, or not by fashionbn); it is not loaded, since "
            "loading it would run code from the file"
        )
    except Exception as err:  # noqa: BLE001 - any failure means: not usable
        return None, f"{name} cannot be loaded ({type(err).__name__})"
    problem = state_problem(state, header["epochs"])
    if problem:
        return None, f"{name} holds {problem}"
    records = state.pop("records")
    return Checkpoint(
        header["identity"], header["status"], records, state,
        header.get("data_sha256"), list(header.get("extensions") or []),
    ), None  # fmt: skip
