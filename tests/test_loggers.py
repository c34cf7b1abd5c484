"""TensorBoard and MLflow, read back with each tool's own reader: what they hold equals
metrics.csv, each epoch once, one run per job, and a failing logger costs no result."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fashionbn.analysis.table import read_sweep
from fashionbn.jobs.files import read_metrics, read_status
from fashionbn.jobs.job import run_job
from fashionbn.jobs.loggers import LOGGERS_FILE
from tests.conftest import compose_config, kill_run, run_module

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def mlflow_client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store}")


def mlflow_runs(store: Path) -> list:
    client = mlflow_client(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def events_of(job_dir: Path) -> Path:
    """The job's TensorBoard dir, as its loggers.json records it."""
    relative = json.loads((job_dir / LOGGERS_FILE).read_text())["tensorboard_dir"]
    return (job_dir / relative).resolve()


def tensorboard_scalars(job_dir: Path, tag: str = "test_acc") -> list[tuple]:
    accumulator = EventAccumulator(str(events_of(job_dir)))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def assert_logged_like_metrics_csv(job_dir: Path, store: Path, run_id: str) -> None:
    """Every epoch's test_acc, once, in both tools, equal to metrics.csv."""
    expected = [(r["epoch"], r["test_acc"]) for r in read_metrics(job_dir)]
    logged = tensorboard_scalars(job_dir)
    assert [step for step, _ in logged] == [epoch for epoch, _ in expected]
    assert [value for _, value in logged] == pytest.approx(
        [value for _, value in expected],
        rel=1e-6,  # TensorBoard keeps float32
    )
    history = mlflow_client(store).get_metric_history(run_id, "test_acc")
    assert sorted((m.step, m.value) for m in history) == expected


@pytest.fixture
def overrides(small_real_overrides, tmp_path) -> list[str]:
    return [*small_real_overrides, "model=batchnorm", "epochs=3", "logger=all"]


@pytest.mark.slow
def test_a_sweep_shows_up_in_both_tools(real_data_root, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "logger=all", "model=baseline,batchnorm", "seed=0,1",
         "epochs=2", "data.train_size=2048", "data.test_size=500",
         "diagnostics=on", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in sweep_dir.glob("*/metrics.csv"))
    assert len(jobs) == 4
    store = sweep_dir / "mlflow.db"
    runs = {run.info.run_name: run for run in mlflow_runs(store)}
    # named by what tells the runs apart first (the swept keys), then the rest
    fixed = "data.test_size=500,data.train_size=2048,diagnostics=on,epochs=2"
    names = {
        f"{fixed},model={model},seed={seed}": f"model={model},seed={seed},{fixed}"
        for model in ("baseline", "batchnorm")
        for seed in (0, 1)
    }
    assert sorted(job.name for job in jobs) == sorted(names)
    assert sorted(runs) == sorted(names.values())  # one run per job
    tensorboard_runs = sorted(p.name for p in (sweep_dir / "tensorboard").iterdir())
    assert tensorboard_runs == sorted(names.values())
    for job in jobs:
        run = runs[names[job.name]]
        assert events_of(job) == (sweep_dir / "tensorboard" / names[job.name])
        config = read_status(job)[0]["config"]
        assert run.data.params["model.name"] == config["model"]["name"]
        assert run.data.params["seed"] == str(config["seed"])
        assert run.data.params["optim.lr"] == "0.001"
        assert run.info.status == "FINISHED"
        artifacts = {
            a.path for a in mlflow_client(store).list_artifacts(run.info.run_id)
        }
        assert artifacts == {"metrics.csv", "status.json", "diagnostics.csv"}
        assert_logged_like_metrics_csv(job, store, run.info.run_id)
        # TensorBoard: one dir is the run (no timestamped add_hparams sub-run)
        events = events_of(job)
        assert [
            p for p in events.rglob("events.out.tfevents.*") if p.parent != events
        ] == []
        assert not list(job.glob("events.out.tfevents.*"))
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        assert set(accumulator.PluginTagToContent("hparams")) == {
            "_hparams_/experiment", "_hparams_/session_start_info",
            "_hparams_/session_end_info",
        }  # fmt: skip
        assert tensorboard_scalars(job, "diagnostics/beta_smoothness/layer_all")
    # the aggregate is not fooled by MLflow's copies of the job files
    assert read_sweep([sweep_dir]).results["run"].nunique() == 4


@pytest.mark.slow
def test_kill_and_resume_logs_each_epoch_once(overrides, tmp_path, monkeypatch):
    job = tmp_path / "job"
    cfg = compose_config(overrides)
    kill_run(cfg, job, monkeypatch, epochs=2)  # dies in epoch 3
    store = job / "mlflow.db"
    (run,) = mlflow_runs(store)
    assert run.info.status == "RUNNING"
    assert len(tensorboard_scalars(job)) == 2
    run_job(cfg, job)
    (resumed,) = mlflow_runs(store)
    assert resumed.info.run_id == run.info.run_id  # the same run continues
    assert resumed.info.status == "FINISHED"
    assert_logged_like_metrics_csv(job, store, run.info.run_id)
    # a finished job run again logs nothing new
    events = sorted(p.stat().st_size for p in events_of(job).glob("events.out.tfev*"))
    run_job(cfg, job)
    assert sorted(
        p.stat().st_size for p in events_of(job).glob("events.out.tfev*")
    ) == (events)
    assert_logged_like_metrics_csv(job, store, run.info.run_id)
    assert len(mlflow_runs(store)) == 1


@pytest.mark.slow
def test_a_fresh_start_replaces_the_old_runs(overrides, tmp_path) -> None:
    job = tmp_path / "job"
    run_job(compose_config(overrides), job)
    (old,) = mlflow_runs(job / "mlflow.db")
    run_job(compose_config([*overrides, "force=true", "epochs=2"]), job)
    (new,) = mlflow_runs(job / "mlflow.db")  # the old one is deleted
    assert new.info.run_id != old.info.run_id
    assert_logged_like_metrics_csv(job, job / "mlflow.db", new.info.run_id)
    assert [step for step, _ in tensorboard_scalars(job)] == [1, 2]


@pytest.mark.slow
def test_an_unreachable_store_costs_no_result(
    overrides, tmp_path, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    job = tmp_path / "job"
    cfg = compose_config([*overrides, "logger=mlflow",
                          "logger.tracking_uri=http://127.0.0.1:9"])  # fmt: skip
    records = run_job(cfg, job)
    assert len(records) == 3 and len(read_metrics(job)) == 3
    assert read_status(job)[0]["status"] == "complete"
    warnings = [r for r in caplog.records if "logger mlflow" in r.getMessage()]
    assert len(warnings) == 1
    assert "training goes on and the csv files are written" in warnings[0].getMessage()


@pytest.mark.slow
def test_a_logger_failing_mid_run_warns_once(overrides, tmp_path, caplog, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    caplog.set_level(logging.WARNING)
    real, calls = SummaryWriter.add_scalar, []

    def disk_full_from_epoch_2(self, tag, value, step, *args, **kwargs):
        calls.append(step)
        if step >= 2:
            raise OSError(28, "No space left on device")
        return real(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full_from_epoch_2)
    job = tmp_path / "job"
    records = run_job(compose_config([*overrides, "logger=tensorboard"]), job)
    assert len(records) == 3 and read_status(job)[0]["status"] == "complete"
    warnings = [r.getMessage() for r in caplog.records if "logger" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert "logger tensorboard failed while it logged" in warnings[0]


@pytest.mark.slow
def test_parallel_jobs_share_one_sqlite_store(real_data_root, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "hydra/launcher=local_parallel", "logger=mlflow",
         "model=baseline,batchnorm", "seed=0,1", "epochs=2", "data.train_size=2048",
         "data.test_size=500", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    assert "logger mlflow" not in result.stderr  # no logger warning either
    runs = mlflow_runs(sweep_dir / "mlflow.db")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        model, seed, fixed = run.info.run_name.split(",", 2)  # swept keys first
        assert (model.split("=")[0], seed.split("=")[0]) == ("model", "seed")
        job = sweep_dir / f"{fixed},{model},{seed}"
        assert (job / LOGGERS_FILE).is_file()
        history = mlflow_client(sweep_dir / "mlflow.db").get_metric_history(
            run.info.run_id, "test_acc"
        )
        assert sorted((m.step, m.value) for m in history) == [
            (r["epoch"], r["test_acc"]) for r in read_metrics(job)
        ]


def test_the_default_imports_no_logger(real_data_root, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fashionbn.run", "epochs=1",
         "data.train_size=1000", "data.test_size=500", f"data.root={real_data_root}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]  # fmt: skip
    assert "fashionbn.jobs.loggers" in imported  # the check below is not vacuous
    assert not [m for m in imported if m.split(".")[0] in ("tensorboard", "mlflow")]
    assert not [m for m in imported if m.startswith("torch.utils.tensorboard")]


@pytest.mark.slow
def test_a_kill_between_two_tags_logs_the_rest_once(overrides, tmp_path, monkeypatch):
    """Killed after TensorBoard got epoch 3's train_loss but not its other scalars:
    the resumed job adds only what is missing."""
    from torch.utils.tensorboard import SummaryWriter

    job = tmp_path / "job"
    cfg = compose_config([*overrides, "logger=tensorboard"])
    kill_run(cfg, job, monkeypatch, epochs=2)
    with SummaryWriter(log_dir=str(job)) as writer:  # what the killed process left
        writer.add_scalar("train_loss", 1.234, 3)
    run_job(cfg, job)
    assert [step for step, _ in tensorboard_scalars(job, "train_loss")] == [1, 2, 3]
    assert [step for step, _ in tensorboard_scalars(job, "test_acc")] == [1, 2, 3]


# --- issue 15: a store killed while it is created, a server that does not answer ----


def test_a_kill_while_the_store_is_created_leaves_no_broken_store(
    tmp_path, monkeypatch, caplog
) -> None:
    """A kill during the schema's migrations (~1.5 s of the first job) used to leave a
    half-migrated mlflow.db that every later job failed to open ("table ... already
    exists"): the store is created aside and renamed into place when complete."""
    import mlflow.store.db.utils as db_utils

    from fashionbn.jobs.loggers import MLflowSink

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"

    def killed(engine):
        raise KeyboardInterrupt  # between creating the tables and migrating them

    with monkeypatch.context() as patch:
        patch.setattr(db_utils, "_upgrade_db", killed)
        with pytest.raises(KeyboardInterrupt):
            MLflowSink(
                tmp_path / "a", {"seed": 0}, True, uri, "e", tmp_path / "art", "a"
            )
    assert not store.exists()
    caplog.set_level(logging.WARNING)
    (tmp_path / "b").mkdir()
    sink = MLflowSink(
        tmp_path / "b", {"seed": 0}, True, uri, "e", tmp_path / "art", "b"
    )
    sink.log([{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}], [])
    history = mlflow_client(store).get_metric_history(sink.run_id, "test_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not list(tmp_path.glob(".mlflow.db.partial-*"))


def test_a_silent_tracking_server_costs_a_sweep_one_short_probe(
    tmp_path, caplog, monkeypatch
) -> None:
    """A server that accepts connections but never answers: MLflow's own retries took
    ~4 minutes per job. One probe with a short timeout, one warning, every later job
    of the process goes on without mlflow at once."""
    import socket
    import time
    import urllib.request

    import fashionbn.jobs.loggers.mlflow_sink
    from fashionbn.jobs.loggers import make_loggers

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setattr(fashionbn.jobs.loggers.mlflow_sink, "PROBE_SECONDS", 0.5)
    monkeypatch.setattr(fashionbn.jobs.loggers.mlflow_sink, "_unreachable", {})
    probes, real_urlopen = [], urllib.request.urlopen

    def counted(*args, **kwargs):
        probes.append(args[0])
        return real_urlopen(*args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counted)
    caplog.set_level(logging.WARNING)
    cfg = compose_config(["logger=mlflow", f"logger.tracking_uri={uri}"]).logger
    start = time.perf_counter()
    for job in range(3):
        loggers = make_loggers(cfg, tmp_path / f"job{job}", tmp_path, {"seed": job},
                               {}, True)  # fmt: skip
        assert loggers.sinks == []
    assert time.perf_counter() - start < 5
    silent.close()
    assert probes == [f"{uri}/health"]
    (warning,) = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert warning.startswith(
        f"logger mlflow is off for this sweep: the tracking server {uri} did not "
        "answer within 0.5 s"
    )
    assert "training goes on and the csv files are written" in warning


# --- issue 22: what a copied job dir's loggers.json may say -------------------------


@pytest.mark.slow
def test_a_copied_job_dir_never_touches_the_originals_mlflow_run(overrides, tmp_path):
    """`cp -r A B` in a sweep with one MLflow store, then force=true on B: A's run
    stays (B's loggers.json names it, but the run is not B's)."""
    import shutil

    sweep = tmp_path / "sweep"
    cfg = compose_config([*overrides, "epochs=1", "logger=mlflow"])
    run_job(cfg, sweep / "A", log_root=sweep)
    (original,) = mlflow_runs(sweep / "mlflow.db")
    shutil.copytree(sweep / "A", sweep / "B")
    run_job(compose_config([*overrides, "epochs=1", "logger=mlflow", "force=true"]),
            sweep / "B", log_root=sweep)  # fmt: skip
    runs = {r.info.run_id: r for r in mlflow_runs(sweep / "mlflow.db")}
    assert original.info.run_id in runs  # active (search_runs lists active runs)
    assert_logged_like_metrics_csv_mlflow(sweep / "A", sweep / "mlflow.db",
                                          original.info.run_id)  # fmt: skip
    (new,) = [r for r in runs if r != original.info.run_id]
    assert json.loads((sweep / "B" / LOGGERS_FILE).read_text())["mlflow_run_id"] == new
    assert runs[new].data.tags["fashionbn.job_dir"] == str((sweep / "B").resolve())


def assert_logged_like_metrics_csv_mlflow(job_dir: Path, store: Path, run_id: str):
    expected = [(r["epoch"], r["test_acc"]) for r in read_metrics(job_dir)]
    history = mlflow_client(store).get_metric_history(run_id, "test_acc")
    assert sorted((m.step, m.value) for m in history) == expected


@pytest.mark.slow
@pytest.mark.parametrize("where", ["absolute", "up"])
def test_loggers_json_never_sends_events_out_of_the_sweep(where, overrides, tmp_path):
    """A tensorboard_dir outside the sweep is not used: force=true would remove the
    events.out.tfevents.* there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "events.out.tfevents.1").write_text("someone's events")
    sweep = tmp_path / "sweep"
    job = sweep / "A"
    job.mkdir(parents=True)
    recorded = str(outside) if where == "absolute" else "../../outside"
    (job / LOGGERS_FILE).write_text(json.dumps({"tensorboard_dir": recorded}))
    cfg = compose_config([*overrides, "epochs=1", "logger=tensorboard", "force=true"])
    run_job(cfg, job, log_root=sweep)
    assert (outside / "events.out.tfevents.1").read_text() == "someone's events"
    assert [p.name for p in outside.iterdir()] == ["events.out.tfevents.1"]
    assert events_of(job).is_relative_to(sweep / "tensorboard")
    assert [step for step, _ in tensorboard_scalars(job)] == [1]


@pytest.mark.slow
def test_a_copied_mlflow_store_never_writes_into_the_originals_artifacts(
    overrides, tmp_path, caplog
):
    """`cp -r alice bob`: bob's mlflow.db names alice's artifact dir for the
    experiment; a job of bob's logs no artifact there (mlflow stays off, with a
    warning; the run's files are written)."""
    import shutil

    alice, bob = tmp_path / "alice", tmp_path / "bob"
    mlflow = ["logger=mlflow", "logger.experiment=bn", "epochs=1"]
    run_job(compose_config([*overrides, *mlflow]), alice / "A", log_root=alice)
    shutil.copytree(alice, bob)
    before = sorted(p for p in (alice / "mlartifacts").rglob("*"))
    with caplog.at_level(logging.WARNING):
        records = run_job(compose_config([*overrides, *mlflow, "seed=1"]),
                          bob / "B", log_root=bob)  # fmt: skip
    assert len(records) == 1
    assert sorted(p for p in (alice / "mlartifacts").rglob("*")) == before
    assert "outside the sweep dir (a copied mlflow.db?)" in caplog.text


@pytest.mark.slow
def test_loggers_json_naming_another_jobs_events_is_not_used(overrides, tmp_path):
    sweep = tmp_path / "sweep"
    tensorboard = [*overrides, "epochs=1", "logger=tensorboard"]
    for seed in (0, 1):
        run_job(compose_config([*tensorboard, f"seed={seed}"]), sweep / str(seed),
                log_root=sweep, run_name=f"seed={seed}")  # fmt: skip
    others = {p: p.read_bytes() for p in events_of(sweep / "1").iterdir()}
    state = json.loads((sweep / "0" / LOGGERS_FILE).read_text())
    state["tensorboard_dir"] = "../tensorboard/seed=1"
    (sweep / "0" / LOGGERS_FILE).write_text(json.dumps(state))
    run_job(compose_config([*tensorboard, "seed=0", "force=true"]), sweep / "0",
            log_root=sweep, run_name="seed=0")  # fmt: skip
    assert {p: p.read_bytes() for p in events_of(sweep / "1").iterdir()} == others
    assert events_of(sweep / "0") == (sweep / "tensorboard" / "seed=0").resolve()
