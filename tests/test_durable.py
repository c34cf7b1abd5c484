"""Writes made durable together (fashionbn.core.atomic.durable_together): every file
written under its temporary name, one sync, the renames in write order, one sync;
a rename that fails stops its directory's later files and is reported per
directory; a kill leaves each file old or whole."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fashionbn.core.atomic as atomic
from fashionbn.core.atomic import (
    WriteError,
    atomic_write,
    durable_together,
    one_by_one,
    partial_debris,
)
from tests.conftest import REPO


@pytest.fixture
def events(monkeypatch) -> list[tuple]:
    """Every fsync, sync of filesystems and rename atomic_write makes, in order."""
    seen: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace
    real_sync = atomic.sync_filesystems

    def fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        seen.append(("replace", Path(dst).name, Path(dst).parent.name))
        return real_replace(src, dst)

    def sync(directories):
        seen.append(("sync", sorted(Path(d).name for d in directories)))
        return real_sync(directories)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic, "sync_filesystems", sync)
    return seen


def dirs(tmp_path: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (tmp_path / name).mkdir()
        for file in ("checkpoint.pt", "metrics.csv", "status.json"):
            (tmp_path / name / file).write_text("old")
        made.append(tmp_path / name)
    return made


def write(directory: Path, name: str, text: str = "new") -> None:
    atomic_write(directory / name, lambda f: f.write(text))


FILES = ("checkpoint.pt", "metrics.csv", "status.json")


def test_files_are_written_then_synced_once_then_renamed_in_order(tmp_path, events):
    a, b = dirs(tmp_path, "a", "b")
    with durable_together():
        for directory in (a, b):
            for name in FILES:
                write(directory, name)
        # nothing renamed yet: the old files are there, the new ones aside
        assert {p.read_text() for d in (a, b) for p in d.iterdir()} == {"old", "new"}
        assert [(d / n).read_text() for d in (a, b) for n in FILES] == ["old"] * 6
        assert len(partial_debris(a)) == len(partial_debris(b)) == 3
        assert events == []  # no fsync per file
    assert events == [
        ("sync", ["a", "b"]),
        *[("replace", name, d) for d in ("a", "b") for name in FILES],
        ("sync", ["a", "b"]),
    ]
    assert [(d / n).read_text() for d in (a, b) for n in FILES] == ["new"] * 6
    assert not partial_debris(a) and not partial_debris(b)


def test_outside_a_block_each_file_is_synced_and_renamed_at_once(tmp_path, events):
    (a,) = dirs(tmp_path, "a")
    write(a, "metrics.csv")
    with durable_together(), one_by_one():
        write(a, "status.json")
        assert (a / "status.json").read_text() == "new"  # at once, inside the block
    fsyncs = [e for e in events if e[0] == "fsync"]
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"] * 2
    assert fsyncs[1][1] == str(a) and fsyncs[3][1] == str(a)  # the renames synced


def test_a_failed_rename_stops_its_directory_and_is_reported(tmp_path, events):
    """metrics.csv of b is a directory: b's checkpoint lands, its metrics and
    status do not (a status never claims a file that did not land); a lands
    whole; b's error reaches the handler, or is raised without one."""
    a, b = dirs(tmp_path, "a", "b")
    (b / "metrics.csv").unlink()
    (b / "metrics.csv").mkdir()
    got: dict = {}
    with durable_together(got.update):
        for directory in (a, b):
            for name in FILES:
                write(directory, name)
    assert list(got) == [b]
    assert isinstance(got[b], WriteError)
    assert str(got[b]) == f"cannot write {b / 'metrics.csv'}: is a directory"
    assert [(a / n).read_text() for n in FILES] == ["new"] * 3
    assert (b / "checkpoint.pt").read_text() == "new"
    assert (b / "status.json").read_text() == "old"
    assert not partial_debris(a) and not partial_debris(b)
    renamed = [(e[2], e[1]) for e in events if e[0] == "replace"]
    assert ("b", "status.json") not in renamed and ("a", "status.json") in renamed
    with pytest.raises(WriteError, match="metrics.csv: is a directory"):
        with durable_together():
            write(b, "checkpoint.pt", "newer")
            write(b, "metrics.csv")
            write(b, "status.json", "newer")
    assert (b / "checkpoint.pt").read_text() == "newer"
    assert (b / "status.json").read_text() == "old"


def test_written_twice_the_last_wins_and_an_exception_still_lands_the_files(
    tmp_path, events
):
    (a,) = dirs(tmp_path, "a")
    with pytest.raises(RuntimeError, match="boom"):
        with durable_together():
            write(a, "status.json", "first")
            write(a, "status.json", "second")
            write(a, "metrics.csv")
            with durable_together():  # joins the outer block
                write(a, "checkpoint.pt")
            assert (a / "checkpoint.pt").read_text() == "old"
            raise RuntimeError("boom")
    assert [(a / n).read_text() for n in FILES] == ["new", "new", "second"]
    assert [e[1] for e in events if e[0] == "replace"] == [
        "status.json", "status.json", "metrics.csv", "checkpoint.pt"]  # fmt: skip
    assert not partial_debris(a)


KILL_BEFORE_RENAME = r"""
import os, signal, sys
from pathlib import Path
import fashionbn.core.atomic as atomic
directory, at = Path(sys.argv[1]), int(sys.argv[2])
renames = [0]
real = os.replace
def replace(src, dst):
    renames[0] += 1
    if renames[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
atomic.os.replace = replace
with atomic.durable_together():
    for name in ("checkpoint.pt", "metrics.csv", "status.json"):
        atomic.atomic_write(directory / name, lambda f: f.write("new " * 1000))
"""


@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_kill_between_renames_leaves_earlier_files_new_and_later_old(tmp_path, at):
    (a,) = dirs(tmp_path, "a")
    result = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, str(a), str(at)],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == -signal.SIGKILL
    texts = [(a / n).read_text() for n in FILES]
    assert texts == ["new " * 1000] * (at - 1) + ["old"] * (4 - at)


def test_a_killed_writers_temporary_files_go_when_the_dir_is_taken_up(tmp_path):
    """A kill between the writes and the renames of durable_together leaves
    temporary files; the next process that locks the dir removes them (and nothing
    else), whether the run then starts, resumes or is found finished."""
    from fashionbn.config.settings import run_identity
    from fashionbn.jobs.resume import prepare_job_dir
    from tests.conftest import compose_config

    job = tmp_path / "job"
    job.mkdir()
    debris = [".checkpoint.pt.partial-4242", ".metrics.csv.partial-4242",
              ".status.json.partial-17"]  # fmt: skip
    for name in debris:
        (job / name).write_bytes(b"half")
    (job / ".notes").write_text("mine")
    prepare_job_dir(job, run_identity(compose_config([])), force=False)
    assert sorted(p.name for p in job.iterdir()) == [".notes"]
