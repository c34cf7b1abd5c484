"""Before any job starts: refuse a sweep or run dir in which Hydra itself would write
through a symbolic link.

Hydra writes each job's `.hydra/*.yaml` and its log file, and a sweep's
`multirun.yaml`, with plain `open()`, before fashionbn's own code runs (which
writes nothing through a link: fashionbn.jobs.untrusted). A dir copied from someone
else could hold a link at one of those names, or a job dir that is a link to a
directory elsewhere; re-running a command into it would then overwrite the link's
target. A Hydra callback (conf/config.yaml: hydra.callbacks.untrusted_dirs) checks
the dir when the command starts and refuses it with one line naming every such link
(exit code 2), before anything is written. (Hydra turns a callback's exceptions into
warnings and goes on, so the refusal is a SystemExit.)
"""

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashionbn.config import FashionbnError

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # in .hydra/
SHOWN = 5  # links named in the message


class LinkedDir(FashionbnError):
    """A dir where Hydra would write through a symbolic link (one line)."""


def hydra_links(directory: Path, log_name: str, sweep: bool) -> list[Path]:
    """The symbolic links in `directory` that Hydra would write through: a sweep's
    multirun.yaml, any job's `.hydra`, `.hydra/*.yaml` and log file and, in a sweep
    dir, any link to a directory (a job dir by another name). Found without
    following a link."""
    directory = Path(directory)
    found = []
    if sweep and (directory / "multirun.yaml").is_symlink():
        found.append(directory / "multirun.yaml")
    for root, dirs, files in os.walk(directory, followlinks=False):
        here = Path(root)
        for name in dirs:
            path = here / name
            if path.is_symlink() and (sweep or name == ".hydra"):
                found.append(path)
        for name in files:
            path = here / name
            if not path.is_symlink():
                continue
            if name == log_name or (here.name == ".hydra" and name in HYDRA_FILES):
                found.append(path)
        if not sweep:  # a run dir: its own files only, not what lies below them
            dirs[:] = [d for d in dirs if d == ".hydra"]
    return sorted(set(found))


def refuse_links(directory: Path, log_name: str, sweep: bool) -> None:
    """LinkedDir naming the links hydra_links finds, if any."""
    if not Path(directory).is_dir():
        return
    links = hydra_links(directory, log_name, sweep)
    if not links:
        return
    shown = ", ".join(str(p) for p in links[:SHOWN])
    more = f" and {len(links) - SHOWN} more" if len(links) > SHOWN else ""
    raise LinkedDir(
        f"refusing to run in {directory}: {shown}{more} "
        f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'} where "
        "Hydra writes a job's files, and nothing is written through one (a dir "
        "copied from elsewhere?); remove the link(s) or use another "
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
