"""No interruption loses a finished run, and nothing is continued on other data
(issue 22): a SIGKILL at every file operation of an extension, the data's digest
compared by extension, resume, extend=true and the aggregate, and an extended sweep
counted once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fashionbn import api
from fashionbn.aggregate import main as aggregate_main
from fashionbn.analysis.table import AggregateError, read_sweep
from fashionbn.jobs.files import read_metrics, read_status
from fashionbn.jobs.job import JobDirError, run_job
from fashionbn.jobs.reading import read_job
from tests.conftest import (
    REPO,
    compose_config,
    kill_run,
    make_tiny_system_dir,
    without_seconds,
    write_idx_gz,
)

TINY = ["data.train_size=300", "data.test_size=100", "device=cpu", "threads=1",
        "model=batchnorm", "optim.momentum=0.9", "optim.lr=0.05"]  # fmt: skip

# In a fresh process (fork is safe there: nothing has started torch's thread
# pools): for k = 1, 2, ..., copy the finished dir, fork, and in the child extend
# it with SIGKILL at its k-th file operation (os.open, fsync, replace, link,
# unlink, rename, ftruncate, pwrite: every instant at which the dir can change),
# until an extension runs through. Prints one JSON record per k.
KILL_AT_EVERY_OPERATION = r"""
import json, os, shutil, signal, sys
import torch
torch.set_num_threads(1)
from fashionbn.api import compose_config
from fashionbn.core.data import data_digest, load_dataset
from fashionbn.jobs.job import run_job

finished, work, mode = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = json.loads(sys.argv[4])
cfg = compose_config(overrides)
load_dataset(cfg.data), data_digest(cfg.data)  # cached before the forks
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports its modules
OPERATIONS = ("open", "fsync", "replace", "link", "unlink", "rename", "ftruncate",
              "pwrite")
records, k = [], 0
while k < 400:
    k += 1
    target = os.path.join(work, f"k{k:03d}")
    shutil.copytree(finished, target, symlinks=True)
    pid = os.fork()
    if pid == 0:
        count = [0]
        for name in OPERATIONS:
            def hooked(*args, _real=getattr(os, name), **kwargs):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*args, **kwargs)
            setattr(os, name, hooked)
        job = os.path.join(target, "job" if mode == "in_place" else "job_longer")
        try:
            run_job(cfg, job)
        except BaseException as err:
            print(repr(err), file=sys.stderr)
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status)
    records.append({"k": k, "dir": target, "killed": killed,
                    "code": None if killed else os.WEXITSTATUS(status)})
    if not killed:
        break
print(json.dumps(records))
"""


def finished_run(root: Path, data_root: Path) -> tuple[Path, list[dict]]:
    """A finished 1-epoch run in root/job (its dir, its records)."""
    cfg = compose_config([f"data.root={data_root}", *TINY, "epochs=1"])
    job = root / "job"
    api.train(cfg, job)
    return job, read_metrics(job)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_place", "extend_true"])
def test_a_kill_at_any_instant_of_an_extension_keeps_the_finished_run(
    mode, real_data_root, tmp_path
):
    """The acceptance: SIGKILL at every file operation of an extension (in place,
    and extend=true into a new dir); every time, the finished run is there — for
    the aggregate and its own command — or the extended one is, and the same
    command then ends with the numbers of an uninterrupted 2-epoch run."""
    job, finished = finished_run(tmp_path / "finished", real_data_root)
    original = {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()}
    base = [f"data.root={real_data_root}", *TINY]
    longer = [*base, "epochs=2"] + (["extend=true"] if mode == "extend_true" else [])
    fresh = without_seconds(api.train(compose_config([*base, "epochs=2"])))
    work = tmp_path / "kills"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", KILL_AT_EVERY_OPERATION, str(job.parent), str(work),
         mode, json.dumps(longer)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout.splitlines()[-1])
    assert records[-1]["code"] == 0, result.stderr  # the last one ran through
    kills = [r for r in records if r["killed"]]
    assert len(kills) >= 20  # every write of the first new epoch was interrupted
    windows = 0
    for record in kills:
        target = Path(record["dir"])
        there = target / "job"
        windows += (there / "checkpoint.finished.pt").exists()
        if mode == "extend_true":  # the finished sibling is only ever read
            assert {p.name: p.read_bytes() for p in there.iterdir()
                    if p.is_file() and p.name != ".lock"} == {
                k: v for k, v in original.items() if k != ".lock"}  # fmt: skip
            there = target / "job_longer"
        seen = read_job(there) if (there / ".hydra").exists() or mode == "in_place" \
            else None  # fmt: skip
        if mode == "in_place":
            status = read_status(there)[0]
            if status["config"]["epochs"] == 1:  # the finished run, intact
                assert seen.problem is None and seen.metrics is not None
                assert read_metrics(there) == finished
                twin = target / "twin"
                shutil.copytree(there, twin)
                again = run_job(compose_config([*base, "epochs=1"]), twin)
                assert again == finished  # its own command: skipped, as it was
                assert api.load_model(twin) is not None
            else:  # the extension's first epoch was saved
                assert status["status"] in ("running", "complete")
                assert status["extensions"] == [{"from_epochs": 1, "to_epochs": 2}]
        assert without_seconds(run_job(compose_config(longer), there)) == fresh
        assert not (there / "checkpoint.finished.pt").exists()
        extension = {"from_epochs": 1, "to_epochs": 2}
        if mode == "extend_true":  # continued from the sibling, not trained again
            extension["from_dir"] = "job"
        assert read_status(there)[0]["extensions"] == [extension]
    if mode == "in_place":
        assert windows >= 1  # some kills came while the finished checkpoint was kept


def test_an_interrupted_extension_leaves_the_finished_run_to_the_aggregate(
    real_data_root, tmp_path, monkeypatch
):
    """The issue's case: epochs=1 finished, epochs=3 interrupted in its first new
    epoch (Ctrl-C): the 1-epoch run stays finished and visible."""
    job, finished = finished_run(tmp_path / "sweep", real_data_root)
    base = [f"data.root={real_data_root}", *TINY]
    kill_run(compose_config([*base, "epochs=3"]), job, monkeypatch, epochs=0)
    status = read_status(job)[0]
    assert (status["status"], status["epochs_done"]) == ("complete", 1)
    assert read_sweep([job.parent]).results["run"].nunique() == 1
    assert run_job(compose_config([*base, "epochs=1"]), job) == finished
    extended = run_job(compose_config([*base, "epochs=3"]), job)
    fresh = api.train(compose_config([*base, "epochs=3"]))
    assert without_seconds(extended) == without_seconds(fresh)


# --- the data a run trained on ------------------------------------------------------


def other_copy(directory: Path) -> Path:
    """The tiny dataset of make_tiny_system_dir with its training labels shuffled:
    the same shapes and names, other content."""
    arrays = make_tiny_system_dir(directory)
    labels = np.random.default_rng(7).permutation(arrays["train-labels-idx1-ubyte"])
    write_idx_gz(directory / "train-labels-idx1-ubyte.gz", labels)
    return directory


def tiny_cfg(system_dir: Path, tmp_path: Path, *more: str):
    root = tmp_path / f"root-{system_dir.name}"
    return compose_config([f"data.system_dir={system_dir}", f"data.root={root}",
                           "device=cpu", "threads=1", "batch_size=16",
                           *more])  # fmt: skip


def test_a_run_is_never_continued_or_taken_as_done_on_other_data(tmp_path, monkeypatch):
    real = tmp_path / "real"
    make_tiny_system_dir(real)
    shuffled = other_copy(tmp_path / "shuffled")
    job = tmp_path / "sweep" / "job"
    api.train(tiny_cfg(shuffled, tmp_path, "epochs=1"), job)
    before = read_status(job)[0]
    for epochs in (1, 2):  # taken as done / extended in place, on the real copy
        with pytest.raises(JobDirError, match="trained on other data"):
            run_job(tiny_cfg(real, tmp_path, f"epochs={epochs}"), job)
    assert read_status(job)[0] == before
    # resume: an interrupted run is not continued on other data either
    kill_run(tiny_cfg(shuffled, tmp_path, "epochs=3"), tmp_path / "half", monkeypatch,
             epochs=1)  # fmt: skip
    with pytest.raises(JobDirError, match="trained on other data"):
        run_job(tiny_cfg(real, tmp_path, "epochs=3"), tmp_path / "half")
    # extend=true passes over a sibling trained on other data: trained from scratch
    longer = tiny_cfg(real, tmp_path, "epochs=2", "extend=true")
    records = run_job(longer, tmp_path / "sweep" / "longer")
    assert "extensions" not in read_status(tmp_path / "sweep" / "longer")[0]
    assert without_seconds(records) == without_seconds(
        api.train(tiny_cfg(real, tmp_path, "epochs=2"))
    )


def test_the_aggregate_refuses_runs_of_one_dataset_on_different_copies(tmp_path):
    real = tmp_path / "real"
    make_tiny_system_dir(real)
    shuffled = other_copy(tmp_path / "shuffled")
    sweep = tmp_path / "sweep"
    api.train(tiny_cfg(real, tmp_path, "epochs=1", "seed=0"), sweep / "a")
    api.train(tiny_cfg(shuffled, tmp_path, "epochs=1", "seed=1"), sweep / "b")
    with pytest.raises(AggregateError, match="trained on different data"):
        read_sweep([sweep])
    assert aggregate_main([str(sweep)]) == 2


# --- an extended sweep is one set of runs ---------------------------------------------


def test_a_sweep_extended_into_its_own_dir_counts_each_run_once(tmp_path):
    """The issue's case: a 2-epoch sweep, then epochs=3 extend=true into the same
    sweep dir: 4 runs, not 8; epochs is no group; one comparison per epoch."""
    system = tmp_path / "system"
    make_tiny_system_dir(system)
    sweep = tmp_path / "sweep"
    for epochs, extend in ((2, "false"), (3, "true")):
        for model in ("baseline", "batchnorm"):
            for seed in (0, 1):
                cfg = tiny_cfg(system, tmp_path, f"model={model}", f"seed={seed}",
                               f"epochs={epochs}", f"extend={extend}")  # fmt: skip
                api.train(cfg, sweep / f"epochs={epochs},model={model},seed={seed}")
    loaded = api.load_sweep(sweep)
    assert loaded.results["run"].nunique() == 4
    assert set(loaded.results["epochs"]) == {3}
    assert loaded.group_keys == ["model"]
    assert sorted(loaded.skipped["kind"]) == ["shorter"] * 4
    assert len(loaded.comparisons) == 2  # epoch 1 and epoch 3, once each
    assert aggregate_main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "4 complete runs" in report
    assert "4 shorter runs counted as the longer run it is the start of" in report
    assert "none of those runs is complete" not in report  # they are, and counted


def test_an_extension_under_way_counts_at_the_budget_it_had_finished(
    real_data_root, tmp_path, monkeypatch
):
    """A finished 1-epoch run extended in place to 3 and killed after epoch 2: the
    dir holds the unfinished extension, whose first epoch is the finished run
    (constant learning rate): `--at-epoch 1` counts it."""
    job, finished = finished_run(tmp_path / "sweep", real_data_root)
    base = [f"data.root={real_data_root}", *TINY]
    kill_run(compose_config([*base, "epochs=3"]), job, monkeypatch, epochs=1)
    status = read_status(job)[0]
    assert (status["status"], status["epochs_done"]) == ("running", 2)
    with pytest.raises(AggregateError, match="incomplete: 2 of 3 epochs"):
        read_sweep([job.parent])  # whole: an unfinished run is not counted
    at_one = api.load_sweep(job.parent, at_epoch=1)
    columns = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert at_one.results[columns].to_dict("records") == [
        {k: finished[0][k] for k in columns}
    ]
    assert any("1 unfinished run" in note for note in at_one.notes)
    assert at_one.skipped.empty
    assert aggregate_main([str(job.parent), "--at-epoch", "1"]) == 0


def test_the_same_run_at_two_budgets_with_other_numbers_is_refused(tmp_path):
    """Two budgets of one run whose shared epochs differ (another thread count, say)
    are not two runs: counted as two, the same seeds would count twice."""
    from tests.conftest import make_job_dir

    sweep = tmp_path / "sweep"
    one = [{"device": "cpu", "torch_threads": 1, "torch": "t"}]
    two = [{"device": "cpu", "torch_threads": 2, "torch": "t"}]
    make_job_dir(sweep / "short", ["seed=0", "epochs=2"], [0.5, 0.6], execution=one)
    make_job_dir(sweep / "long", ["seed=0", "epochs=4"], [0.5, 0.6000001, 0.7, 0.8],
                 execution=two)  # fmt: skip
    with pytest.raises(AggregateError) as refused:
        read_sweep([sweep])
    message = str(refused.value)
    assert f"{sweep / 'short'} and {sweep / 'long'} hold the same run" in message
    assert "test_acc at epoch 2: 0.6000001 vs 0.6" in message
    assert "ran on cpu with 1 torch thread vs cpu with 2 torch threads" in message
