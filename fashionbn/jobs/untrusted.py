"""A job or sweep dir is untrusted input; this module is the one place that opens it.

People copy sweep dirs from colleagues, clusters and archives, so a dir may hold
anything: symbolic links to files elsewhere, directories where files belong, JSON of
the wrong shape. The rule (docs/reliability.md):
- nothing read from a dir names a path outside it: a path taken from a file is
  resolved, and one that is not inside the dir it belongs to is refused (`inside`);
- a file fashionbn reads, replaces or removes must be a regular file below the dir,
  reached without a symbolic link on the way: a link, a directory or a device where a
  file belongs makes the dir damaged, with that reason (`entry_problem`), and nothing
  is written, replaced or removed through a link;
- nothing from it is executed or unpickled (checkpoints load with weights_only=True,
  YAML with safe_load);
- every field read from its JSON, CSV and YAML files is type-checked by the reader of
  that file (fashionbn.jobs.files, .checkpoint, .reading), and a bad one makes the dir
  "damaged, with the reason", never a traceback.
Readers call `read_bytes`/`read_text`/`read_json` here, never `open` on a job-dir path.
"""

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

import yaml

from fashionbn.config import FashionbnError


class UnsafeEntry(FashionbnError):
    """An entry of a job or sweep dir that fashionbn must not read or write through."""


def inside(base: Path, path: Path) -> bool:
    """Whether `path`, resolved (every symbolic link followed), is `base` resolved or
    lies below it."""
    try:
        return Path(path).resolve().is_relative_to(Path(base).resolve())
    except (OSError, RuntimeError):  # unreadable, or a symbolic link loop
        return False


def entry_problem(directory: Path, name: str) -> Optional[str]:
    """Why directory/name (name may have several parts, e.g. `.hydra/config.yaml`)
    cannot be read or replaced as a file fashionbn wrote — a symbolic link on the way
    or at the end, a directory, a device — or None when it is a regular file or
    absent."""
    path = Path(directory)
    parts = Path(name).parts
    for depth, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"{name} cannot be examined ({err.strerror})"
        last = depth == len(parts) - 1
        where = name if last else "/".join(parts[: depth + 1])
        if stat.S_ISLNK(mode):
            return (
                f"{where} is a symbolic link (fashionbn writes none, and reads or "
                "writes nothing through one)"
            )
        if not last and not stat.S_ISDIR(mode):
            return f"{where} is not a directory"
        if last and stat.S_ISDIR(mode):
            return f"{name} is a directory, not a file"
        if last and not stat.S_ISREG(mode):
            return f"{name} is not a regular file"
    return None


def is_file(directory: Path, name: str) -> bool:
    """Whether directory/name is a regular file reached without a symbolic link."""
    return entry_problem(directory, name) is None and (Path(directory) / name).exists()


def read_bytes(directory: Path, name: str) -> bytes:
    """directory/name's bytes. FileNotFoundError when absent; UnsafeEntry when it is
    not a regular file reached without a symbolic link; OSError when unreadable."""
    problem = entry_problem(directory, name)
    if problem:
        raise UnsafeEntry(problem)
    # O_NOFOLLOW: a link swapped in after the check is refused too; O_NONBLOCK: a
    # FIFO swapped in never blocks the reader
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(Path(directory) / name, flags)
    except OSError as err:
        if err.errno in (getattr(os, "ELOOP", 40),):
            raise UnsafeEntry(f"{name} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafeEntry(f"{name} is not a regular file")
        return f.read()


def read_text(directory: Path, name: str) -> str:
    """directory/name as UTF-8 text (as read_bytes; ValueError when not UTF-8)."""
    data = read_bytes(directory, name)
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not UTF-8 text ({err.reason})") from None


def read_json(directory: Path, name: str) -> Any:
    """directory/name parsed as JSON (as read_text; ValueError when it is not JSON)."""
    return parse_json(read_text(directory, name))


def parse_json(text: str | bytes) -> Any:
    """JSON from an untrusted file; ValueError for anything that is not JSON a
    program of this size can hold (also arrays nested deeper than Python's
    recursion allows)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be read") from None


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases: Hydra never writes them, and a
    few nested aliases expand into more data than any config (a 'billion laughs')."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in this file")
        return super().compose_node(parent, index)


def read_yaml(directory: Path, name: str) -> Any:
    """directory/name parsed as YAML with safe_load's types only, no aliases (as
    read_text; ValueError when it cannot be parsed)."""
    try:
        return yaml.load(read_text(directory, name), Loader=_NoAliasLoader)
    except (yaml.YAMLError, RecursionError) as err:
        raise ValueError(f"{name} is not plain YAML ({err})") from None


def unreadable(name: str, err: BaseException) -> str:
    """One reason for a file that read_* refused or could not read."""
    if isinstance(err, UnsafeEntry):
        return str(err)
    if isinstance(err, OSError):
        return f"{name} is unreadable ({err.strerror or err})"
    return f"{name} is unreadable ({type(err).__name__}: {err})"


def fashionbns(directory: Path) -> bool:
    """Whether `directory` holds the files fashionbn leaves in a job dir."""
    return all(os.path.lexists(directory / n) for n in ("status.json", "checkpoint.pt"))


def job_dirs(sweep_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every dir at or below `sweep_dir` that Hydra ran a job in (it holds
    `.hydra/config.yaml`), found without following a symbolic link; and (path, why
    not read) for the entries that looked like job dirs but are not read: symbolic
    links to directories (the aggregate reads nothing through a link: copy the dir in
    instead) and job dirs whose `.hydra/config.yaml` is not a regular file. Copies of
    a job's files elsewhere (MLflow's artifacts: no `.hydra/`, no checkpoint) are not
    jobs; a dir with fashionbn's status.json and checkpoint.pt is one, with or
    without `.hydra/`."""
    found, refused = [], []
    for root, dirs, _ in os.walk(sweep_dir, followlinks=False):
        here = Path(root)
        for name in list(dirs):
            path = here / name
            if path.is_symlink():
                dirs.remove(name)
                if path.is_dir() and name != ".hydra":
                    refused.append((str(path), "a symbolic link to a directory: "
                                    "not read (copy the dir in instead)"))  # fmt: skip
        if ".hydra" in dirs or (here / ".hydra").is_symlink():
            problem = entry_problem(here, ".hydra/config.yaml")
            if problem:
                refused.append((str(here), problem))
            elif (here / ".hydra" / "config.yaml").exists() or fashionbns(here):
                found.append(here)
        elif fashionbns(here):  # its .hydra/ lost (e.g. `cp job/* new/`)
            found.append(here)
        if ".hydra" in dirs:
            dirs.remove(".hydra")
    return sorted(found), refused
