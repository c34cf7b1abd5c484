"""The aggregate's output folder (--out): written as one set, and only ever touching
what fashionbn's aggregate wrote there itself.

Every output is rendered in memory first; then all are written to temporary files and
renamed into place, so a full or read-only folder keeps its previous outputs, never
half of a new set. `.fashionbn-outputs.json` records the name and SHA-256 of every
file the aggregate wrote: an output name that exists but is not recorded there, or was
changed since (a user's own `comparisons.csv`, an edited `report.md`), is never
replaced or removed — the aggregate refuses instead. Folders written by a fashionbn
before the record existed are recognised by their `report.md`.

The record may come from someone else's folder (a copied sweep, whose dir is the
default --out): only names the aggregate writes (OUTPUTS) with a SHA-256 are taken
from it, never a path, and only a regular file is taken as an output — a symbolic
link or a directory under an output's name is "not ours", so nothing is written,
replaced or removed through or at it (fashionbn.jobs.untrusted).
"""

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

from fashionbn.jobs.files import create_new, partial_debris, partial_name
from fashionbn.jobs.untrusted import UnsafeEntry, entry_problem, read_bytes, read_json


class OutputError(Exception):
    """The outputs cannot be written without harming what the folder holds."""


MANIFEST = ".fashionbn-outputs.json"
REPORT_TITLE = b"# fashionbn report"
# every file aggregate may write; one a new aggregate does not produce is removed,
# if the aggregate wrote it
OUTPUTS = (
    "results.csv",
    "summary.csv",
    "summary.md",
    "comparisons.csv",
    "selection.csv",
    "test_accuracy.png",
    "accuracy_gap.png",
    "tuning.png",
    "diagnostics_summary.csv",
    "layer_inputs.png",
    "gradients.png",
    "smoothness.png",
    "robustness.csv",
    "robustness.png",
    "profile.csv",
    "profile.png",
    "report.md",
)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digests(entries) -> dict[str, str]:
    """The entries of a record that are an output's name with a SHA-256."""
    if not isinstance(entries, dict):
        return {}
    return {
        name: value
        for name, value in entries.items()
        if name in OUTPUTS and isinstance(value, str)
        and re.fullmatch("[0-9a-f]{64}", value)
    }  # fmt: skip


def ours(out_dir: Path) -> dict[str, Optional[set[str]]]:
    """name -> the SHA-256s a file of that name the aggregate wrote into out_dir may
    have (None: written by a fashionbn that kept no record; then only the outputs
    beside its report). A record left by an aggregate killed while it renamed its
    outputs lists the new set as `pending`: each file is then the old or the new.
    Entries that are not an output's name with a SHA-256 are ignored."""
    try:
        record = read_json(out_dir, MANIFEST)
    except (OSError, ValueError, UnsafeEntry):
        record = None
    if isinstance(record, dict) and isinstance(record.get("written"), dict):
        written = _digests(record["written"])
        pending = _digests(record.get("pending"))
        return {name: {written.get(name), pending.get(name)} - {None}
                for name in {*written, *pending}}  # fmt: skip
    try:
        legacy = read_bytes(out_dir, "report.md").startswith(REPORT_TITLE)
    except (OSError, UnsafeEntry):
        legacy = False
    return {name: None for name in OUTPUTS if legacy and is_plain_file(out_dir, name)}


def is_plain_file(out_dir: Path, name: str) -> bool:
    return entry_problem(out_dir, name) is None and (out_dir / name).exists()


def is_ours(out_dir: Path, name: str, written: dict[str, Optional[set[str]]]) -> bool:
    """Whether out_dir/name is a file the aggregate wrote, unchanged (a regular
    file: never a symbolic link)."""
    if name not in written or not is_plain_file(out_dir, name):
        return False
    if written[name] is None:
        return True
    try:
        return digest(read_bytes(out_dir, name)) in written[name]
    except (OSError, UnsafeEntry):
        return False


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write `files` into out_dir as one set, remove the aggregate's own outputs that
    are not in it, and record what was written. Raise OutputError, changing nothing,
    if an output name is taken by a file the aggregate did not write (or that was
    changed since), or if the folder cannot take the files. The record names the
    new set as pending before the first output is renamed into place, so a kill
    while they are renamed leaves a folder the next aggregate takes as its own."""
    written = ours(out_dir)
    if os.path.lexists(out_dir / MANIFEST) and not is_plain_file(out_dir, MANIFEST):
        raise OutputError(
            f"refusing to write into {out_dir}: {entry_problem(out_dir, MANIFEST)}; "
            "move it away or choose another --out"
        )
    foreign = [
        name
        for name in files
        if os.path.lexists(out_dir / name) and not is_ours(out_dir, name, written)
    ]
    if foreign:
        raise OutputError(
            f"refusing to replace {', '.join(str(out_dir / n) for n in foreign)}: "
            "fashionbn's aggregate did not write "
            f"{'it' if len(foreign) == 1 else 'them'} (or it was changed since); "
            "move it away or choose another --out"
        )
    new = {name: digest(data) for name, data in sorted(files.items())}
    old = {name: digest(read_bytes(out_dir, name)) for name in written
           if is_ours(out_dir, name, written)}  # fmt: skip
    partials = {name: partial_name(out_dir / name) for name in files}
    target = out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_debris(out_dir)
        for name, data in files.items():
            target = out_dir / name
            write_new(partials[name], data)
        target = out_dir / MANIFEST
        record(out_dir, {"written": old, "pending": new})
    except OSError as err:
        for partial in partials.values():
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only dir never got it
        reason = (err.strerror or str(err)).lower()
        raise OutputError(
            f"cannot write {target}: {reason}; nothing in {out_dir} was changed"
        ) from err
    for name, partial in partials.items():
        os.replace(partial, out_dir / name)
    for stale in set(written) - set(files):
        if is_ours(out_dir, stale, written):
            (out_dir / stale).unlink(missing_ok=True)
    record(out_dir, {"written": new})


def write_new(path: Path, data: bytes) -> None:
    """`path` created anew (never through a link) holding `data`."""
    with os.fdopen(create_new(path), "wb") as f:
        f.write(data)


def record(out_dir: Path, entries: dict) -> None:
    """The outputs record, replaced as a whole."""
    partial = partial_name(out_dir / MANIFEST)
    write_new(partial, (json.dumps(entries, indent=2) + "\n").encode())
    os.replace(partial, out_dir / MANIFEST)


def remove_debris(out_dir: Path) -> None:
    """Temporary files of killed aggregates (`.report.md.partial-<pid>`, ...):
    regular files only, never a link's target."""
    for name in (*OUTPUTS, MANIFEST):
        for debris in partial_debris(out_dir, name):
            if debris.is_file() and not debris.is_symlink():
                debris.unlink(missing_ok=True)
