"""Writing a file so that a kill at any moment leaves the old file or the whole new
one, never half of one: the prepared dataset and every job-dir file are written so.

A full or read-only disk is reported as one line (WriteError), not as a traceback.
"""

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fashionbn.config import FashionbnError

# errors that mean "this disk cannot take the file", not "the data is bad"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# errors that mean "something else than a file of ours is in the way" (a directory
# where the file belongs, a symbolic link planted at the temporary name)
_IN_THE_WAY_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EEXIST}


class WriteError(FashionbnError):
    """A file could not be written (disk full, read-only, no permission)."""


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call write(file) on a temporary file next to `path`, then rename it to `path`.

    The data is flushed to the disk (fsync) before the rename, and the rename itself
    after it (the directory's fsync): on a network filesystem (SLURM clusters) or
    after a power cut, `path` then holds either the old file or the whole new one,
    never a renamed but still empty one.

    Nothing is written through a symbolic link: the temporary file is created anew
    (O_EXCL, O_NOFOLLOW; a link left at its name is removed, never followed), and the
    rename replaces whatever entry `path` is rather than writing into it."""
    path = Path(path)
    partial = partial_name(path)
    try:
        text = {"newline": ""} if "b" not in mode else {}
        with os.fdopen(create_new(partial), mode, **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        sync_directory(path.parent)
    except OSError as err:
        if err.errno in _DISK_ERRNOS | _IN_THE_WAY_ERRNOS:
            reason = (err.strerror or str(err)).lower()
            raise WriteError(f"cannot write {path}: {reason}") from err
        raise
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass  # a directory at the temporary name: reported above


def create_new(path: Path) -> int:
    """A file descriptor of `path` created anew for writing: whatever entry had the
    name (debris of an interrupted write, a planted symbolic link) is removed first,
    never followed (O_EXCL, O_NOFOLLOW)."""
    Path(path).unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    return os.open(path, flags, 0o644)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename into it is on the disk; best effort (not
    every filesystem can open or sync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_debris(directory: Path, name: str = "*") -> list[Path]:
    """Temporary files that an interrupted atomic_write of `name` (a glob) left in
    `directory`, by any process."""
    return sorted(Path(directory).glob(f".{name}.partial-*"))


def partial_name(path: Path) -> Path:
    """The temporary name atomic_write uses for `path` in this process."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")
