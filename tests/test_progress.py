"""Progress of a sweep and a run, and the names runs go by in TensorBoard and MLflow:
each checked against values worked out by hand."""

import shutil
from pathlib import Path

import pytest

from fashionbn.jobs import progress
from fashionbn.jobs.loggers import LOGGERS_FILE, events_dir
from fashionbn.jobs.progress import EpochBar, run_name, sweep_jobs, sweep_line
from tests.conftest import run_module


def test_a_sweep_is_counted_like_the_basic_sweeper_counts_it():
    params = {"model": "baseline,batchnorm", "optim.lr": "0.1,0.01"}
    jobs, swept = sweep_jobs(params, ["seed=0,1,2", "epochs=2"])
    assert (jobs, swept) == (2 * 2 * 3, ["model", "optim.lr", "seed"])
    # the command line wins over the preset's sweep of the same key
    assert sweep_jobs({"seed": "0,1,2", "model": "a,b"}, ["seed=5"]) == (2, ["model"])
    assert sweep_jobs({}, ["seed=range(0,4)"]) == (4, ["seed"])


@pytest.mark.parametrize(
    "arguments",
    [
        ["model=a,b", "seed=range(0,3)", "model=c,d,e"],
        ["seed=choice(1,2,3,4)", "+extra=x,y", "epochs=2"],
        ["optim.lr=0.1,0.2", "seed=0", "optim.lr=0.3"],
        ["data.drop_last=true,false", "optim.lr=interval(0.1,0.2)"],
    ],
)
def test_the_count_is_the_basic_sweepers_own(arguments):
    """Against Hydra's BasicSweeper itself (a private class: only the test uses it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any("interval" in a for a in arguments):  # no basic sweep: neither counts
        with pytest.raises(Exception, match="does not support"):
            BasicSweeper.split_arguments(
                OverridesParser.create().parse_overrides(arguments), None
            )
        with pytest.raises(ValueError, match="not a list of values"):
            sweep_jobs({}, arguments)
        return
    batches = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(arguments), None
    )
    assert sweep_jobs({}, arguments)[0] == len(batches[0])


def test_the_sweep_line_counts_elapsed_and_the_time_left(monkeypatch):
    monkeypatch.setenv(progress.START_VAR, "100.0")
    monkeypatch.setenv(progress.JOBS_VAR, "6")
    # job 2 of 6 ends 60 s in: 30 s a job, 4 to go
    assert (
        sweep_line(1, True, now=160.0) == "job 2/6 done, 1:00 elapsed, about 2:00 left"
    )
    assert sweep_line(1, False, now=160.0) == "job 2/6, 1:00 elapsed"
    assert sweep_line(5, True, now=4000.0) == "job 6/6 done, 1:05:00 elapsed"
    monkeypatch.delenv(progress.JOBS_VAR)  # jobs that could not be counted
    assert sweep_line(1, True, now=160.0) == "job 2 done, 1:00 elapsed"
    monkeypatch.delenv(progress.START_VAR)  # not a sweep
    assert sweep_line(1, True) == ""


def test_runs_are_named_by_what_tells_them_apart_first(monkeypatch):
    overrides = ["data.train_size=10000", "epochs=3", "model=batchnorm",
                 "model.hidden=[64,32]", "optim.lr=0.1", "seed=1"]  # fmt: skip
    assert run_name(overrides, ["optim.lr", "seed"]) == (
        "optim.lr=0.1,seed=1,data.train_size=10000,epochs=3,model=batchnorm,"
        "model.hidden=[64,32]"
    )
    monkeypatch.setenv(progress.SWEPT_VAR, "model.hidden,model")
    assert run_name(overrides).startswith("model.hidden=[64,32],model=batchnorm,data.")
    monkeypatch.delenv(progress.SWEPT_VAR)  # no sweep: model, seed, lr first
    assert run_name(overrides) == (
        "model=batchnorm,seed=1,optim.lr=0.1,data.train_size=10000,epochs=3,"
        "model.hidden=[64,32]"
    )


def test_the_epoch_bar_counts_steps_and_epochs_after_a_resume():
    bar = EpochBar(steps_per_epoch=5, epochs_done=2, enabled=True)
    for _ in range(3):
        bar.step()
    assert (bar.bar.desc, bar.bar.total, bar.bar.n) == ("epoch 3", 5, 3)
    bar.end_epoch(3)
    assert bar.bar is None
    bar.step()
    assert (bar.bar.desc, bar.bar.n) == ("epoch 4", 1)
    bar.end_epoch(4)
    quiet = EpochBar(steps_per_epoch=5, epochs_done=0, enabled=False)
    quiet.step()
    assert quiet.bar is None


def test_tensorboard_events_go_to_the_sweep_under_the_run_name(tmp_path):
    sweep = tmp_path / "sweep"
    job = sweep / "epochs=2,model=a,seed=0"
    job.mkdir(parents=True)
    where = events_dir(job, sweep, "model=a,seed=0,epochs=2")
    assert where == (sweep / "tensorboard" / "model=a,seed=0,epochs=2").resolve()
    # kept in loggers.json relative to the job dir: a moved sweep still finds it
    assert (
        '"../tensorboard/model=a,seed=0,epochs=2"' in (job / LOGGERS_FILE).read_text()
    )
    moved = tmp_path / "moved"
    shutil.move(sweep, moved)
    again = events_dir(moved / job.name, moved, "another name")
    assert again == (moved / "tensorboard" / "model=a,seed=0,epochs=2").resolve()
    # a job dir of an older fashionbn keeps its events where they are
    old = tmp_path / "old" / "model=a"
    old.mkdir(parents=True)
    (old / "events.out.tfevents.1.host").write_bytes(b"")
    assert events_dir(old, old.parent, "model=a") == old


@pytest.mark.slow
def test_a_sweep_logs_job_k_of_n(real_data_root, tmp_path):
    result = run_module(
        ["fashionbn.run", "-m", "model=baseline,batchnorm", "seed=0", "epochs=1",
         "data.train_size=256", "data.test_size=100", "threads=1",
         f"data.root={real_data_root}", f"hydra.sweep.dir={tmp_path / 's'}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line.split(" - ", 1)[-1] for line in result.stderr.splitlines()]
    assert "sweep of 2 jobs (sweeping model)" in result.stdout  # where Hydra says it
    starts = [line for line in lines if line.startswith("job ") and "done" not in line]
    assert [s.split(",")[0] for s in starts] == ["job 1/2", "job 2/2"]
    assert starts[0].endswith(": model=baseline,data.test_size=100,"
                              "data.train_size=256,epochs=1,seed=0")  # fmt: skip
    done = [line for line in lines if line.startswith("job ") and "done" in line]
    assert done[0].startswith("job 1/2 done, ") and "left" in done[0]
    assert done[1].startswith("job 2/2 done, ") and "left" not in done[1]
    assert "epoch 1" not in "".join(
        p.read_text() for p in Path(tmp_path / "s").rglob("status.json")
    )
