"""Before any job starts: refuse a sweep or run dir in which Hydra itself would write
through a link or trip over an entry that is not what it expects.

Hydra writes each job's `.hydra/*.yaml` and its log file, and a sweep's
`multirun.yaml`, with plain `open()`, before fashionbn's own code runs (which
writes nothing through a link: fashionbn.jobs.untrusted). A dir copied from someone
else could hold, at one of those names, a symbolic link or a hard link to a file
elsewhere (re-running a command would overwrite it), a FIFO (Hydra would hang), a
directory, or a file where a job's dir belongs (Hydra would stop the whole sweep with
a traceback). A Hydra callback (conf/config.yaml: hydra.callbacks.untrusted_dirs)
checks the dir when the command starts and refuses it with one line naming every
such entry (exit code 2), before anything is written. (Hydra turns a callback's
exceptions into warnings and goes on, so the refusal is a SystemExit.)

Which names are a sweep's job dirs is known only once every job is composed; the
check takes the names Hydra gives them here (`key=value,...` from the overrides, or
a job's number) and any dir that already holds a `.hydra`.
"""

import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashionbn.config import FashionbnError

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # in .hydra/
SHOWN = 5  # entries named in the message
JOB_DIR_NAME = re.compile(r".*=.*|\d+")  # override_dirname, or hydra.job.num


class LinkedDir(FashionbnError):
    """A dir where Hydra would write through a link or fail on an entry."""


def file_problem(path: Path) -> Optional[str]:
    """Why Hydra must not open `path` to write (None: absent, or a plain file with
    no other name)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{path} cannot be examined ({err.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a directory"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file (a FIFO or a device)"
    if info.st_nlink > 1:
        return f"{path} has other names (hard links) that writing it would change"
    return None


def dir_problem(path: Path) -> Optional[str]:
    """Why Hydra must not use `path` as a directory (None: absent or a real dir)."""
    if path.is_symlink():
        return f"{path} is a symbolic link"
    if os.path.lexists(path) and not path.is_dir():
        return f"{path} is not a directory"
    return None


def job_dir_problems(job: Path, log_name: str) -> list[str]:
    """Why Hydra must not write a job's files into `job` (a real dir)."""
    problems = [dir_problem(job / ".hydra")]
    if problems[0] is None and (job / ".hydra").is_dir():
        problems += [file_problem(job / ".hydra" / name) for name in HYDRA_FILES]
    problems.append(file_problem(job / log_name))
    return [p for p in problems if p]


def hydra_problems(directory: Path, log_name: str, sweep: bool) -> list[str]:
    """Every entry of `directory` that Hydra would write through or fail on: a
    sweep's multirun.yaml, any job dir's `.hydra`, `.hydra/*.yaml` and log file,
    and, in a sweep dir, anything but a real directory at a job dir's name. Found
    without following a link."""
    directory = Path(directory)
    if not sweep:  # a run dir is one job dir
        problem = dir_problem(directory)
        return [problem] if problem else job_dir_problems(directory, log_name)
    problems = [file_problem(directory / "multirun.yaml")]
    for entry in sorted(directory.iterdir()):
        if JOB_DIR_NAME.fullmatch(entry.name):
            problems.append(dir_problem(entry))
            if problems[-1] is None:
                problems += job_dir_problems(entry, log_name)
    for root, dirs, _ in os.walk(directory, followlinks=False):
        here = Path(root)
        if ".hydra" in dirs or os.path.lexists(here / ".hydra"):
            if here != directory or JOB_DIR_NAME.fullmatch(here.name):
                problems += job_dir_problems(here, log_name)
        dirs[:] = [d for d in dirs if d != ".hydra" and not (here / d).is_symlink()]
    return sorted({p for p in problems if p})


def refuse_links(directory: Path, log_name: str, sweep: bool) -> None:
    """LinkedDir naming what hydra_problems finds, if anything."""
    if not os.path.lexists(directory):
        return
    if sweep and not Path(directory).is_dir():
        raise LinkedDir(f"{directory} is not a directory")
    problems = hydra_problems(directory, log_name, sweep)
    if not problems:
        return
    shown = "; ".join(problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise LinkedDir(
        f"refusing to run in {directory}: {shown}{more} — where Hydra writes a "
        "job's files, nothing may be written through a link or stand in the way "
        "(a dir copied from elsewhere?); move the entries away or use another "
        f"hydra.{'sweep' if sweep else 'run'}.dir"
    )


def _log_name(config: DictConfig) -> str:
    return f"{config.hydra.job.name}.log"


def _refuse_or_exit(directory: Path, log_name: str, sweep: bool) -> None:
    try:
        refuse_links(directory, log_name, sweep)
    except LinkedDir as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


class RefuseLinks(Callback):
    """The Hydra callback: checks the sweep dir (or the run dir) at the start."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_or_exit(Path(config.hydra.sweep.dir), _log_name(config), sweep=True)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_or_exit(Path(config.hydra.run.dir), _log_name(config), sweep=False)
