"""A sweep or job dir is untrusted input (issue 22; docs/reliability.md): nothing read
from it names a path outside it, nothing is written, replaced or removed through a
symbolic link, nothing is unpickled or executed, every field is type-checked; a bad
one makes that dir damaged with the reason, never a traceback, and leaves every other
job as it was."""

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from fashionbn import api
from fashionbn.aggregate import main as aggregate_main
from fashionbn.config import FashionbnError, identity_problem
from fashionbn.config.settings import run_identity
from fashionbn.jobs.files import read_status, status_problem
from fashionbn.jobs.job import JobDirError, run_job
from fashionbn.jobs.preflight import LinkedDir, hydra_problems, refuse_links
from fashionbn.jobs.untrusted import entry_problem, inside, job_dirs, read_bytes
from tests.conftest import compose_config, make_tiny_system_dir, run_module

# --- the rule's pieces, on hand-made entries -----------------------------------------


def test_only_regular_files_reached_without_a_link_are_read(tmp_path):
    (tmp_path / "outside").write_text("secret")
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / "plain").write_text("ok")
    (job / "link").symlink_to(tmp_path / "outside")
    (job / "dir").mkdir()
    os.mkfifo(job / "fifo")
    (job / "linked_dir").symlink_to(job / ".hydra")
    (job / ".hydra" / "config.yaml").write_text("x")
    assert entry_problem(job, "plain") is None and read_bytes(job, "plain") == b"ok"
    assert entry_problem(job, "missing") is None
    assert "symbolic link" in entry_problem(job, "link")
    assert "is a directory" in entry_problem(job, "dir")
    assert "not a regular file" in entry_problem(job, "fifo")  # never opened: no hang
    linked = entry_problem(job, "linked_dir/config.yaml")
    assert "linked_dir is a symbolic link" in linked
    assert entry_problem(job, ".hydra/config.yaml") is None
    for name in ("link", "dir", "fifo", "linked_dir/config.yaml"):
        with pytest.raises(FashionbnError):
            read_bytes(job, name)
    assert inside(tmp_path, job / "plain") and not inside(job, job / "link")
    assert not inside(job, job / ".." / "outside")


def test_job_dirs_are_found_without_following_a_link(tmp_path):
    sweep, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    for job in (sweep / "a", elsewhere / "b"):
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text("x")
    (sweep / "b").symlink_to(elsewhere / "b")  # a job dir by a link
    (sweep / "c" / ".hydra").mkdir(parents=True)
    (sweep / "c" / ".hydra" / "config.yaml").symlink_to(elsewhere / "b" / ".hydra"
                                                         / "config.yaml")  # fmt: skip
    found, refused = job_dirs(sweep)
    assert found == [sweep / "a"]
    assert {Path(p).name for p, _ in refused} == {"b", "c"}
    assert all("symbolic link" in why for _, why in refused)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": None}, "damaged format"),
        ({"format": "3"}, "damaged format"),
        ({"epochs_done": "1"}, "epochs_done='1'"),
        ({"epochs_done": True}, "epochs_done=True"),
        ({"status": ["complete"]}, "unknown status"),
        ({"config": "x"}, "holds no config"),
        ({"extensions": "x"}, "damaged extensions"),
        ({"extensions": [{"from_epochs": "1"}]}, "damaged extensions"),
        ({"execution": 5}, "damaged execution"),
        ({"execution": [{"device": {"x": 1}}]}, "damaged execution"),
        ({"data_sha256": 5}, "damaged data_sha256"),
        ({"metrics_sha256": None}, "damaged metrics_sha256"),
        ({"error": 3}, "damaged error"),
        ({"epochs_done": 0}, "says complete after 0 epochs, but its config asks for 5"),
        ({"status": "running", "epochs_done": 6}, "6 epochs are done, of the 5"),
        ({"status": "diverged", "epochs_done": 0}, "says diverged after 0 epochs"),
        ({"config": "[" * 5000 + "]" * 5000}, "holds no config"),
    ],
)
def test_every_field_of_status_json_is_type_checked(change, problem):
    cfg = compose_config([])
    status = {"status": "complete", "epochs_done": 5, "format": 3,
              "config": run_identity(cfg), "metrics_sha256": "0" * 64}  # fmt: skip
    assert status_problem(status) is None
    assert problem in status_problem({**status, **change})


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("epochs", "3", "epochs='3', not an integer"),
        ("seed", True, "seed=True, not an integer"),
        ("model", 5, "damaged"),
        ("optim", {"name": ["sgd"]}, "optim.name=['sgd'], not a string"),
        ("batch_size", 64.5, "batch_size=64.5, not an integer"),
        ("precise_bn", "no", "precise_bn='no', not a boolean"),
    ],
)
def test_a_stored_identity_of_the_wrong_types_is_refused(key, value, problem):
    identity = run_identity(compose_config(["model=batchnorm"]))
    assert identity_problem(identity) is None
    changed = {**identity, key: value}
    if key == "optim":
        changed["optim"] = {**identity["optim"], **value}
    assert problem in identity_problem(changed)


# --- the property: hostile variants of every job-dir file ---------------------------

OUTSIDE_FILES = ("status.json", "metrics.csv", "checkpoint.pt", "config.yaml",
                 ".lock", "report.md", "x")  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A sweep of two finished 1-epoch runs, A (seed 0) and B (seed 1), with its
    aggregate, on the tiny generated dataset."""
    root = tmp_path_factory.mktemp("pristine")
    make_tiny_system_dir(root / "system")
    for seed, name in ((0, "A"), (1, "B")):
        api.train(tiny(root, seed, 1), root / "sweep" / name)
    assert aggregate_main([str(root / "sweep")]) == 0
    return root


def tiny(root: Path, seed: int, epochs: int, *more: str):
    return compose_config([f"data.system_dir={root / 'system'}",
                           f"data.root={root / 'data'}", "device=cpu", "threads=1",
                           "batch_size=16", f"seed={seed}", f"epochs={epochs}",
                           *more])  # fmt: skip


def snapshot(directory: Path) -> dict:
    """Every entry below `directory` (links not followed): its bytes, link target or
    'dir'."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path))
        elif path.is_dir():
            found[str(path)] = "dir"
        elif path.is_file():
            found[str(path)] = path.read_bytes()
        else:
            found[str(path)] = "other"
    return found


def link_out(relative: bool) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        remove(path)
        target = outside / (path.name if path.name in OUTSIDE_FILES else "x")
        path.symlink_to(os.path.relpath(target, path.parent) if relative else target)

    return make


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def as_directory(path: Path, outside: Path) -> None:
    remove(path)
    path.mkdir()
    (path / "inside").write_text("a file in a dir where a file belongs")


def as_fifo(path: Path, outside: Path) -> None:
    remove(path)
    os.mkfifo(path)


def truncated(path: Path, outside: Path) -> None:
    data = path.read_bytes() if path.is_file() else b"{}"
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path, outside: Path) -> None:
    path.write_bytes(b"\x00\xff\xfe garbage \x80" * 7)


def json_edit(**change) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        record = json.loads(path.read_text())
        for key, value in change.items():
            if callable(value):
                value = value(outside)
            record[key] = value
        path.write_text(json.dumps(record))

    return make


def checkpoint_header(**change) -> Callable[[Path, Path], None]:
    """Edit the JSON header of checkpoint.pt (its digest covers the payload only)."""

    def make(path: Path, outside: Path) -> None:
        magic, header, payload = path.read_bytes().split(b"\n", 2)
        record = json.loads(header)
        record.update(change)
        path.write_bytes(b"\n".join([magic, json.dumps(record).encode(), payload]))

    return make


def text(content: str) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        path.write_text(content)

    return make


def manifest(written) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        entries = written(outside) if callable(written) else written
        path.write_text(json.dumps({"written": entries}))

    return make


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


COMMON = {"link": link_out(False), "relative-link": link_out(True),
          "directory": as_directory, "fifo": as_fifo, "truncated": truncated,
          "empty": text(""), "garbage": garbage}  # fmt: skip
VARIANTS = {
    "A/status.json": {
        **COMMON,
        "list": text("[]"),
        "format-null": json_edit(format=None),
        "format-string": json_edit(format="3"),
        "format-newer": json_edit(format=4),
        "epochs_done-string": json_edit(epochs_done="1"),
        "epochs_done-more": json_edit(epochs_done=99),
        "config-string": json_edit(config="x"),
        "config-epochs-string": json_edit(config={"epochs": "3"}),
        "extensions-string": json_edit(extensions="x"),
        "execution-number": json_edit(execution=5),
        "data_sha256-number": json_edit(data_sha256=5),
        "metrics_sha256-null": json_edit(metrics_sha256=None),
        "nested-too-deeply": text("[" * 100000 + "]" * 100000),
    },
    "A/metrics.csv": {**COMMON, "extra-cells": text("epoch,x\n1,2,3,4\n")},
    "A/checkpoint.pt": {
        **COMMON,
        "header-epochs-string": checkpoint_header(epochs="1"),
        "header-identity-damaged": checkpoint_header(identity={"epochs": "3"}),
        "header-bytes-negative": checkpoint_header(bytes=-1),
        "header-status-unknown": checkpoint_header(status=["complete"]),
        "header-nested-too-deeply": lambda path, outside: path.write_bytes(
            b"fashionbn checkpoint\n" + b"[" * 100000 + b"]" * 100000 + b"\n"
        ),
    },
    "A/.lock": {
        "link": link_out(False),
        "directory": as_directory,
        "hard-link": lambda path, outside: (
            remove(path),
            os.link(outside / ".lock", path),
        ),
    },
    "A/loggers.json": {
        "link": link_out(False),
        "directory": as_directory,
        "list": text("[]"),
        "tensorboard_dir-absolute": text('{"tensorboard_dir": "/"}'),
        "tensorboard_dir-up": text('{"tensorboard_dir": "../../../outside"}'),
        "mlflow_run_id-number": text('{"mlflow_run_id": 5}'),
    },  # fmt: skip
    "A/.hydra/config.yaml": {
        **COMMON,
        "python-object": text("!!python/object/apply:os.system ['touch PWNED']\n"),
        "epochs-string": text("model: {}\nepochs: three\n"),
    },
    "A/.hydra": {"link": link_out(False)},
    ".fashionbn-outputs.json": {
        "link": link_out(False),
        "directory": as_directory,
        "list": text("[]"),
        "paths-outside": manifest(
            lambda outside: {
                "../outside/x": digest_of(outside / "x"),
                str(outside / "status.json"): None,
                "report.md": None,
            }
        ),
        "digest-not-hex": manifest({"report.md": 5, "results.csv": ["x"]}),
        "nested-too-deeply": text("[" * 100000 + "]" * 100000),
    },  # fmt: skip
    "report.md": {"link": link_out(False), "directory": as_directory},
    "A": {
        "link-to-outside": link_out(False),
        "link-to-outside-dir": lambda path, outside: (
            remove(path),
            path.symlink_to(outside),
        ),
    },
}
# a link at these names makes job A refused by run_job and left out of the aggregate
LINKS_REFUSED = ("A/status.json", "A/metrics.csv", "A/checkpoint.pt", "A/.lock",
                 "A/loggers.json", "A")  # fmt: skip
CASES = [(name, variant) for name, variants in VARIANTS.items() for variant in variants]


def attempt(action: Callable[[], object]) -> str:
    """'ok', or the one-line error a problem with the input gives; anything else
    (a traceback) fails the test."""
    try:
        action()
    except FashionbnError as err:
        assert "\n" not in str(err)
        return f"refused: {err}"
    return "ok"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}:{v}" for n, v in CASES])
def test_a_hostile_job_dir_file_costs_nothing_outside_it(
    name, variant, pristine, tmp_path
):
    """Every operation on a sweep with one hostile entry: the same command (resume
    or skip), an extension in place and by extend=true, the aggregate's reading
    (load_sweep; the whole aggregate, which writes its outputs, where the entry is
    one of the sweep's own). No traceback; nothing outside the sweep changes; job B
    is left as it was (and counted, when the aggregate answers)."""
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for file in OUTSIDE_FILES:  # copies of A's own files: a reader that followed a
        # link would find them valid
        for source in (root / "sweep" / "A" / file, root / "sweep" / "A" / ".hydra"
                       / file, root / "sweep" / file):  # fmt: skip
            if source.is_file():
                shutil.copy(source, outside / file)
                break
        else:
            (outside / file).write_text(f"not fashionbn's {file}\n")
    (outside / "events.out.tfevents.1").write_text("someone's events\n")
    sweep = root / "sweep"
    VARIANTS[name][variant](sweep / name, outside)
    before_outside, before_b = snapshot(tmp_path / "outside"), snapshot(sweep / "B")
    outcomes = [
        attempt(lambda: run_job(tiny(root, 0, 1), sweep / "A")),
        attempt(lambda: run_job(tiny(root, 0, 2), sweep / "A")),
        attempt(lambda: run_job(tiny(root, 0, 3, "extend=true"), sweep / "A3")),
        attempt(lambda: api.load_sweep(sweep)),
    ]
    if "/" not in name and name != "A":  # the aggregate's outputs: written for real
        assert aggregate_main([str(sweep)]) in (0, 2)
    assert snapshot(tmp_path / "outside") == before_outside, outcomes
    assert snapshot(sweep / "B") == before_b, outcomes
    assert not list(root.rglob("PWNED")) and not Path("PWNED").exists()
    runs = set(api.load_sweep(sweep).results["run"]) if outcomes[-1] == "ok" else set()
    if outcomes[-1] == "ok":
        assert str(sweep / "B") in runs
    if "link" in variant and name in LINKS_REFUSED:  # nothing read through a link
        assert outcomes[0].startswith("refused") and outcomes[1].startswith("refused")
        if name not in ("A/.lock", "A/loggers.json"):  # the aggregate reads neither
            assert str(sweep / "A") not in runs


# --- fashionbn's own files that are not files ---------------------------------------


def test_a_lock_that_is_a_link_is_never_written_through(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    target = tmp_path / "target"
    target.write_text("mine\n")
    job = root / "sweep" / "A"
    (job / ".lock").unlink(missing_ok=True)
    (job / ".lock").symlink_to(target)
    with pytest.raises(JobDirError, match=r"\.lock"):
        run_job(tiny(root, 0, 1, "force=true"), job)
    assert target.read_text() == "mine\n"
    assert read_status(job)[0]["status"] == "complete"  # not even force removed it


def test_a_metrics_csv_that_is_a_directory_is_refused_even_with_force(
    pristine, tmp_path
):
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    job = root / "sweep" / "A"
    (job / "metrics.csv").unlink()
    (job / "metrics.csv").mkdir()
    (job / "metrics.csv" / "notes").write_text("mine")
    for force in ("false", "true"):
        with pytest.raises(JobDirError, match="metrics.csv is a directory"):
            run_job(tiny(root, 0, 1, f"force={force}"), job)
    assert (job / "metrics.csv" / "notes").read_text() == "mine"


def test_a_status_of_a_newer_fashionbn_is_neither_replaced_nor_counted(
    pristine, tmp_path
):
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    job = root / "sweep" / "A"
    json_edit(format=4)(job / "status.json", tmp_path)
    with pytest.raises(JobDirError, match="a newer fashionbn"):
        run_job(tiny(root, 0, 1), job)
    loaded = api.load_sweep(root / "sweep")
    assert "newer fashionbn" in loaded.skipped.set_index("run").loc[str(job), "reason"]


# --- the aggregate's outputs ---------------------------------------------------------


def test_the_outputs_record_never_names_a_path_to_remove(pristine, tmp_path):
    """The issue's case: `{"written": {"../v1": <its sha256>, "/abs/v2": null}}` in a
    copied sweep deleted both."""
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    sweep = root / "sweep"
    v1, v2 = root / "v1", tmp_path / "v2"
    v1.write_text("one")
    v2.write_text("two")
    record = json.loads((sweep / ".fashionbn-outputs.json").read_text())
    record["written"].update({"../v1": digest_of(v1), str(v2): None})
    (sweep / ".fashionbn-outputs.json").write_text(json.dumps(record))
    assert aggregate_main([str(sweep)]) == 0
    assert v1.read_text() == "one" and v2.read_text() == "two"


def test_no_output_is_written_through_a_link_at_its_name(pristine, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    sweep = root / "sweep"
    target = tmp_path / "target.md"
    target.write_bytes((sweep / "report.md").read_bytes())  # a digest that matches
    (sweep / "report.md").unlink()
    (sweep / "report.md").symlink_to(target)
    planted = tmp_path / "planted"
    planted.write_text("mine")
    (sweep / f".summary.csv.partial-{os.getpid()}").symlink_to(planted)
    before = target.read_bytes()
    assert aggregate_main([str(sweep)]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert target.read_bytes() == before and planted.read_text() == "mine"
    (sweep / "report.md").unlink()
    assert aggregate_main([str(sweep)]) == 0  # the planted link is removed, not used
    assert planted.read_text() == "mine"
    assert not (sweep / f".summary.csv.partial-{os.getpid()}").exists()


# --- where Hydra itself writes -------------------------------------------------------


def test_entries_where_hydra_writes_are_found(tmp_path):
    sweep, outside = tmp_path / "sweep", tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    (sweep / "a=1" / ".hydra").mkdir(parents=True)
    (sweep / "a=1" / "run.log").symlink_to(outside / "f")
    (sweep / "a=1" / ".hydra" / "config.yaml").symlink_to(outside / "f")
    os.link(outside / "f", sweep / "a=1" / ".hydra" / "hydra.yaml")  # a hard link
    os.mkfifo(sweep / "a=1" / ".hydra" / "overrides.yaml")
    (sweep / "seed=1").symlink_to(outside)  # a job dir by a link
    (sweep / "seed=2").write_text("a file where a job's dir belongs")
    (sweep / "multirun.yaml").symlink_to(outside / "f")
    (sweep / "b=2" / "run.log").mkdir(parents=True)
    (sweep / "b=2" / ".hydra").write_text("a file where Hydra's dir belongs")
    (sweep / "notes").symlink_to(outside)  # no job's name: Hydra writes nothing
    (sweep / "c=3" / ".hydra").mkdir(parents=True)
    (sweep / "c=3" / "notes.txt").symlink_to(outside / "f")  # not written by Hydra
    found = hydra_problems(sweep, "run.log", sweep=True)
    assert [p.removeprefix(f"{sweep}/") for p in found] == [
        "a=1/.hydra/config.yaml is a symbolic link",
        "a=1/.hydra/hydra.yaml has other names (hard links) that writing it would "
        "change",
        "a=1/.hydra/overrides.yaml is not a regular file (a FIFO or a device)",
        "a=1/run.log is a symbolic link",
        "b=2/.hydra is not a directory",
        "b=2/run.log is a directory",
        "multirun.yaml is a symbolic link",
        "seed=1 is a symbolic link",
        "seed=2 is not a directory",
    ]
    with pytest.raises(LinkedDir, match="and 4 more"):
        refuse_links(sweep, "run.log", sweep=True)
    refuse_links(tmp_path / "no-such-dir", "run.log", sweep=True)  # nothing to check
    # a run dir: itself, its .hydra and its log
    (tmp_path / "run").symlink_to(outside)
    assert hydra_problems(tmp_path / "run", "run.log", sweep=False) == [
        f"{tmp_path / 'run'} is a symbolic link"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweep_dir_where_hydra_would_write_through_a_link_is_refused(
    launcher, tmp_path
):
    make_tiny_system_dir(tmp_path / "system")
    sweep, target = tmp_path / "sweep", tmp_path / "bashrc"
    target.write_text("mine\n")
    (sweep / "seed=0" / ".hydra").mkdir(parents=True)
    (sweep / "seed=0" / "run.log").symlink_to(target)
    result = run_module(
        ["fashionbn.run", "-m", "seed=0,1", "epochs=1", "threads=1",
         f"data.system_dir={tmp_path / 'system'}", f"data.root={tmp_path / 'data'}",
         f"hydra.sweep.dir={sweep}",
         *(["hydra/launcher=batched"] if launcher == "batched" else [])],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{sweep / 'seed=0' / 'run.log'} is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stderr
    assert target.read_text() == "mine\n"
    assert not (sweep / "seed=1").exists()  # refused before any job started


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fifo-at-run.log", "run-dir-is-a-link"])
def test_hydras_own_writes_never_hang_nor_go_through_a_link(case, tmp_path):
    """A FIFO where Hydra appends a job's log hung the command; a single run's dir
    that is a link got Hydra's files in its target before fashionbn refused it."""
    make_tiny_system_dir(tmp_path / "system")
    target = tmp_path / "elsewhere"
    target.mkdir()
    common = ["epochs=1", "threads=1", f"data.system_dir={tmp_path / 'system'}",
              f"data.root={tmp_path / 'data'}"]  # fmt: skip
    if case == "fifo-at-run.log":
        (tmp_path / "sweep" / "epochs=1,seed=0").mkdir(parents=True)
        os.mkfifo(tmp_path / "sweep" / "epochs=1,seed=0" / "run.log")
        args = ["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    else:
        (tmp_path / "run").symlink_to(target)
        args = [f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_module(["fashionbn.run", *args, *common], tmp_path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refusing to run in" in result.stderr
    assert list(target.iterdir()) == []


def test_an_aggregate_killed_while_renaming_its_outputs_leaves_them_its_own(
    pristine, tmp_path, monkeypatch
):
    """A kill between two renames left results.csv new and the rest old: the next
    aggregate refused its own file. Now the record names the new set first."""
    import fashionbn.analysis.outputs as outputs

    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    sweep = root / "sweep"
    api.train(tiny(root, 2, 1), sweep / "C")  # something new to write
    real_replace, renames = os.replace, []

    def killed_after_two(src, dst):
        if len(renames) == 2:
            raise KeyboardInterrupt
        renames.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        aggregate_main([str(sweep)])
    monkeypatch.undo()
    assert len(renames) == 2  # the pending record and one output were renamed
    assert aggregate_main([str(sweep)]) == 0
    assert not list(sweep.glob(".*.partial-*"))  # the killed one's debris is gone
    assert "3 complete runs" in (sweep / "report.md").read_text()


def test_a_finished_job_dir_without_its_hydra_files_is_still_found(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    shutil.rmtree(root / "sweep" / "A" / ".hydra")  # `cp job/* new/` skips it
    runs = set(api.load_sweep(root / "sweep").results["run"])
    assert runs == {str(root / "sweep" / "A"), str(root / "sweep" / "B")}


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A 'billion laughs' in .hydra/config.yaml of a dir without status.json (read
    as an old fashionbn's): refused at once, not expanded."""
    from fashionbn.jobs.reading import read_job

    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    laughs = ["model: {name: baseline}", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    (job / ".hydra" / "config.yaml").write_text("\n".join(laughs) + "\n")
    assert "aliases (*name) are not allowed" in read_job(job).problem
