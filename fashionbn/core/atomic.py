"""Writing a file so that a kill at any moment leaves the old file or the whole new
one, never half of one: the prepared dataset and every job-dir file are written so.

A full or read-only disk is reported as one line (WriteError), not as a traceback.

Within `durable_together()` (a cohort's epoch: every run's files) the writes are
made durable together: every file is written under its temporary name, then one
sync of each filesystem they are on, then the renames in the order the files were
written, then one more sync for the renames: two syncs instead of two per file, and
the same guarantees (a kill or a power cut leaves each file old or whole, and a
file renamed only after the ones written before it).
"""

import ctypes
import errno
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Optional

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
    rename replaces whatever entry `path` is rather than writing into it.

    Inside durable_together() the file is synced and renamed when the block ends,
    together with the block's other files."""
    path = Path(path)
    together = _TOGETHER[-1] if _TOGETHER else None
    if together is not None and path in together:  # written twice in one block
        together.commit()  # the first lands first, whole
    partial = partial_name(path)
    queued = False
    try:
        text = {"newline": ""} if "b" not in mode else {}
        with os.fdopen(create_new(partial), mode, **text) as f:
            write(f)
            f.flush()
            if together is None:
                os.fsync(f.fileno())
        if together is not None:
            together.add(partial, path)
            queued = True
            return
        os.replace(partial, path)
        sync_directory(path.parent)
    except OSError as err:
        problem = disk_error(err, path)
        if problem is err:
            raise
        raise problem from err
    finally:
        if not queued:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass  # a directory at the temporary name: reported above


def disk_error(err: OSError, path: Path) -> Exception:
    """`err` as one line (WriteError) where it means the disk cannot take `path` or
    something else is in its way; `err` itself otherwise."""
    if err.errno in _DISK_ERRNOS | _IN_THE_WAY_ERRNOS:
        reason = (err.strerror or str(err)).lower()
        return WriteError(f"cannot write {path}: {reason}")
    return err


class Together:
    """Files written under their temporary names, to be synced and renamed at once
    (durable_together)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (partial, path), in write order
        self.paths: set[Path] = set()
        self.failed: dict[Path, Exception] = {}  # directories whose renames failed

    def __contains__(self, path: Path) -> bool:
        return path in self.paths

    def add(self, partial: Path, path: Path) -> None:
        self.pending.append((partial, path))
        self.paths.add(path)

    def commit(self) -> dict[Path, Exception]:
        """Sync the written files, rename them in order, sync the renames. A rename
        that fails skips the later files of its directory (a file is never renamed
        before one written ahead of it); returns each such directory's error, as
        atomic_write raises it (this commit's and the earlier ones')."""
        pending, self.pending, self.paths = self.pending, [], set()
        failed = self.failed
        if not pending:
            return failed
        directories = list(dict.fromkeys(path.parent for _, path in pending))
        sync_filesystems(directories)  # the data, before any name points at it
        for partial, path in pending:
            try:
                if path.parent not in failed:
                    os.replace(partial, path)
                    continue
            except OSError as err:
                failed[path.parent] = disk_error(err, path)
            try:
                partial.unlink(missing_ok=True)  # not renamed: its old file stays
            except OSError:
                pass
        sync_filesystems(directories)  # the renames
        return failed


_TOGETHER: list[Optional[Together]] = []  # the innermost block last (None: one_by_one)


@contextmanager
def durable_together(
    failed: Optional[Callable[[dict[Path, Exception]], None]] = None,
) -> Iterator[None]:
    """atomic_write's files within the block are synced and renamed together when it
    ends (see the module's docstring), also when it ends by an exception (each file
    is whole); a block inside another joins the outer one. Where renames failed,
    `failed` gets each directory's error; without it the first is raised."""
    if _TOGETHER and _TOGETHER[-1] is not None:
        yield
        return
    together = Together()
    _TOGETHER.append(together)
    try:
        yield
    except BaseException:
        _TOGETHER.pop()
        together.commit()  # the exception that ended the block is the one to report
        raise
    _TOGETHER.pop()
    failures = together.commit()
    if failures and failed is not None:
        failed(failures)
    elif failures:
        raise next(iter(failures.values()))


@contextmanager
def one_by_one() -> Iterator[None]:
    """atomic_write within the block syncs and renames each file at once, also
    inside durable_together (for steps whose order with other file operations,
    links and removals, matters)."""
    _TOGETHER.append(None)
    try:
        yield
    finally:
        _TOGETHER.pop()


def sync_filesystems(directories: list[Path]) -> None:
    """Flush every filesystem that holds one of `directories` to the disk: one
    syncfs per filesystem (Linux), os.sync() where there is none."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    by_device: dict[int, Path] = {}
    for directory in directories:
        try:
            by_device.setdefault(os.stat(directory).st_dev, directory)
        except OSError:
            continue
    for directory in by_device.values():
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            os.sync()
            continue
        try:
            if syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


@functools.cache
def _syncfs() -> Optional[Callable[[int], int]]:
    """libc's syncfs(fd), or None where there is none."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


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
