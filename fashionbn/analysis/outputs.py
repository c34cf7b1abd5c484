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

from fashionbn.jobs.files import create_new, partial_name
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
    "report.md",
)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ours(out_dir: Path) -> dict[str, Optional[str]]:
    """name -> SHA-256 of each output the aggregate wrote into out_dir (None: written
    by a fashionbn that kept no record; then only the outputs beside its report).
    Entries of the record that are not an output's name with a SHA-256 are ignored."""
    try:
        written = read_json(out_dir, MANIFEST)["written"]
    except (OSError, ValueError, KeyError, TypeError, UnsafeEntry):
        written = None
    if isinstance(written, dict):
        return {
            name: value
            for name, value in written.items()
            if name in OUTPUTS
            and isinstance(value, str)
            and re.fullmatch("[0-9a-f]{64}", value)
        }
    try:
        legacy = read_bytes(out_dir, "report.md").startswith(REPORT_TITLE)
    except (OSError, UnsafeEntry):
        legacy = False
    return {name: None for name in OUTPUTS if legacy and is_plain_file(out_dir, name)}


def is_plain_file(out_dir: Path, name: str) -> bool:
    return entry_problem(out_dir, name) is None and (out_dir / name).exists()


def is_ours(out_dir: Path, name: str, written: dict[str, Optional[str]]) -> bool:
    """Whether out_dir/name is the file the aggregate wrote, unchanged (a regular
    file: never a symbolic link)."""
    if name not in written or not is_plain_file(out_dir, name):
        return False
    if written[name] is None:
        return True
    try:
        return digest(read_bytes(out_dir, name)) == written[name]
    except (OSError, UnsafeEntry):
        return False


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write `files` into out_dir as one set, remove the aggregate's own outputs that
    are not in it, and record what was written. Raise OutputError, changing nothing,
    if an output name is taken by a file the aggregate did not write (or that was
    changed since), or if the folder cannot take the files."""
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
    record = {"written": {name: digest(data) for name, data in sorted(files.items())}}
    # the record travels with the set: written with it, renamed into place last
    files = {**files, MANIFEST: (json.dumps(record, indent=2) + "\n").encode()}
    partials = {name: partial_name(out_dir / name) for name in files}
    target, started = out_dir, []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            target = out_dir / name
            started.append(partials[name])
            with os.fdopen(create_new(partials[name]), "wb") as f:
                f.write(data)
    except OSError as err:
        for partial in started:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only dir never got it
        reason = (err.strerror or str(err)).lower()
        raise OutputError(
            f"cannot write {target}: {reason}; nothing in {out_dir} was changed"
        ) from err
    for name, partial in partials.items():
        if name != MANIFEST:
            os.replace(partial, out_dir / name)
    for stale in set(written) - set(files):
        if is_ours(out_dir, stale, written):
            (out_dir / stale).unlink(missing_ok=True)
    os.replace(partials[MANIFEST], out_dir / MANIFEST)
