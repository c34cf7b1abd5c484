"""The CLI entrypoint as a user runs it: real subprocesses, real Hydra multirun."""

import csv
from pathlib import Path

import pandas as pd
import pytest

from fashionbn.jobs.files import METRIC_COLUMNS
from tests.conftest import run_module, without_seconds


def raw_metrics_rows(job_dir: Path) -> list[dict]:
    """metrics.csv read with the csv module, as a user's script reads it: on purpose
    not fashionbn.jobs.files.read_metrics, the code under test."""
    with open(job_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == METRIC_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def tiny_sweep(real_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 models x 2 seeds multirun (1 epoch, data subsets) in a subprocess."""
    tmp_path = tmp_path_factory.mktemp("tiny_sweep")
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "model=baseline,batchnorm", "seed=0,1", "epochs=1",
         "data.train_size=2048", "data.test_size=1000", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return sweep_dir


@pytest.mark.slow
def test_multirun_writes_one_dir_per_job(tiny_sweep: Path) -> None:
    sweep_dir = tiny_sweep
    job_dirs = sorted(p.parent for p in sweep_dir.glob("*/metrics.csv"))
    assert [p.name for p in job_dirs] == [
        "data.test_size=1000,data.train_size=2048,epochs=1,model=baseline,seed=0",
        "data.test_size=1000,data.train_size=2048,epochs=1,model=baseline,seed=1",
        "data.test_size=1000,data.train_size=2048,epochs=1,model=batchnorm,seed=0",
        "data.test_size=1000,data.train_size=2048,epochs=1,model=batchnorm,seed=1",
    ]
    for job_dir in job_dirs:
        assert len(raw_metrics_rows(job_dir)) == 1
        assert (job_dir / ".hydra" / "config.yaml").is_file()
        assert (job_dir / ".hydra" / "overrides.yaml").is_file()
    # the data.root override says where, not what: it stays out of the dir names
    assert not any("data.root" in p.name for p in job_dirs)


@pytest.mark.slow
def test_aggregate_a_real_sweep_end_to_end(tiny_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "aggregate"
    result = run_module(
        ["fashionbn.aggregate", str(tiny_sweep), "--out", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"report: {out / 'report.md'}" in result.stdout
    for name in ("results.csv", "summary.csv", "summary.md", "test_accuracy.png",
                 "accuracy_gap.png", "report.md"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["model"]) == {"baseline", "batchnorm"}
    assert "Gap batchnorm − baseline at epoch 1" in (out / "report.md").read_text()


@pytest.mark.slow
def test_single_run_with_documented_overrides(real_data_root: Path, tmp_path) -> None:
    result = run_module(
        ["fashionbn.run", "optim=adam", "optim.lr=0.01", "epochs=2", "batch_size=128",
         "model.hidden=[128,64,32]", "data.train_size=1024", "data.test_size=500",
         f"data.root={real_data_root}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = raw_metrics_rows(tmp_path / "run")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "name: adam" in config and "- 128" in config
    assert "epoch 2/2" in result.stderr + result.stdout  # per-epoch progress lines


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["-m", "hydra/launcher=basic"],
                                      ["-m", "hydra/launcher=batched"]])  # fmt: skip
def test_hydras_disabled_job_logging_silences_a_run(launcher, real_data_root, tmp_path):
    """hydra/job_logging=disabled (Hydra's own option) replaces fashionbn's job
    logging: every job of a hostile pass failed with 'Unable to configure handler
    console' while its console's stream was set on top of whatever was chosen."""
    result = run_module(
        ["fashionbn.run", *launcher, "hydra/job_logging=disabled", "epochs=1",
         "seed=0,1" if launcher else "seed=0", "threads=1", "data.train_size=640",
         "data.test_size=200", f"data.root={real_data_root}",
         f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 's'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = [*tmp_path.glob("run/metrics.csv"), *tmp_path.glob("s/*/metrics.csv")]
    assert len(metrics) == (2 if launcher else 1)
    if launcher != ["-m", "hydra/launcher=batched"]:  # (a cohort logs for its runs)
        assert "epoch 1/1" not in result.stderr
        assert not [*tmp_path.glob("run/run.log"), *tmp_path.glob("s/*/run.log")]


@pytest.mark.slow
def test_missing_dataset_stops_with_one_clear_message(tmp_path: Path) -> None:
    result = run_module(
        ["fashionbn.run", "data.system_dir=null", f"data.root={tmp_path / 'empty'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "FashionMNIST not found" in result.stderr
    assert "apt-get install -y dataset-fashion-mnist" in result.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, threads",
    [
        (["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"], 1),
        (
            [
                "hydra/launcher=submitit_local",
                "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.timeout_min=10",
            ],
            1,
        ),
    ],  # fmt: skip
    ids=["joblib", "submitit_local"],
)
def test_parallel_launchers_run_jobs_as_separate_processes(
    launcher: list[str], threads: int, tiny_sweep: Path, real_data_root: Path, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", *launcher, "model=baseline,batchnorm", "seed=0",
         "epochs=1", "data.train_size=2048", "data.test_size=1000",
         f"data.root={real_data_root}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # launcher keys stay out of the dir names: the same config lands in the same place
    names = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.csv"))
    common = "data.test_size=1000,data.train_size=2048,epochs=1"
    assert names == [
        f"{common},model=baseline,seed=0",
        f"{common},model=batchnorm,seed=0",
    ]
    for job in names:
        log = (sweep_dir / job / "run.log").read_text()
        assert f"({threads} torch threads)" in log  # n_jobs x threads <= cores
    # the same numbers as the basic launcher's, up to the last digits that the
    # thread count changes (1 thread per job here, all cores there)
    for name in names:
        here = without_seconds(raw_metrics_rows(sweep_dir / name))
        basic = without_seconds(raw_metrics_rows(tiny_sweep / name))
        for row_here, row_basic in zip(here, basic):
            assert {k: float(v) for k, v in row_here.items() if v} == pytest.approx(
                {k: float(v) for k, v in row_basic.items() if v}, rel=1e-4, abs=2e-3
            )
    aggregated = run_module(["fashionbn.aggregate", str(sweep_dir)], tmp_path)
    assert aggregated.returncode == 0, aggregated.stderr
    assert (sweep_dir / "report.md").is_file() and (
        sweep_dir / "accuracy_gap.png"
    ).is_file()


@pytest.mark.slow
def test_benchmark_command_runs_both_pipelines(real_data_root: Path, tmp_path) -> None:
    """A smoke test only: speed is measured by the command, never asserted here."""
    result = run_module(
        ["fashionbn.bench", "--models", "baseline", "batchnorm", "--epochs", "1",
         "--repeats", "1", "data.train_size=2048", "data.test_size=1000",
         f"data.root={real_data_root}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[:2] for row in rows] == [
        ["baseline", "reference"], ["baseline", "fashionbn"],
        ["batchnorm", "reference"], ["batchnorm", "fashionbn"],
    ]  # fmt: skip
    for row in rows:
        assert float(row[3].replace(",", "")) > 0  # samples/s
        assert 0.0 <= float(row[4]) <= 1.0  # test accuracy


@pytest.mark.slow
def test_glob_sweeps_every_model_option_and_no_schema(real_data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        ["fashionbn.run", "-m", "model=glob(*)", "epochs=1", "data.train_size=256",
         "data.test_size=100", f"data.root={real_data_root}",
         f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.csv"))
    common = "data.test_size=100,data.train_size=256,epochs=1"
    models = ("baseline", "batchnorm", "batchnorm_after", "cnn", "cnn_batchnorm",
              "cnn_groupnorm", "groupnorm", "layernorm", "rmsnorm")  # fmt: skip
    assert names == [f"{common},model={m}" for m in models]


@pytest.mark.slow
def test_help_lists_the_real_options_only(tmp_path: Path) -> None:
    result = run_module(["fashionbn.run", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "schema" not in result.stdout
    conf = Path(__file__).resolve().parents[1] / "conf"
    for group in ("model", "optim", "data", "experiment"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{group}:"))
        for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
            assert option in line, (group, option)


@pytest.mark.slow
def test_benchmark_sweep_mode_times_whole_processes(real_data_root, tmp_path) -> None:
    """A smoke test only: the ratio is measured by the command, never asserted."""
    result = run_module(
        ["fashionbn.bench", "--sweep", "--epochs", "1", "--seeds", "1",
         "data.train_size=1024", "data.test_size=500", f"data.root={real_data_root}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("whole sweep as processes (2 models x 1 seeds, 1 epoch")
    rows = {line[:26].strip(): line[26:].split() for line in lines[2:5]}
    assert set(rows) == {"reference", "fashionbn", "fashionbn, local_parallel"}
    assert rows["reference"][1] == "1.0x" and float(rows["fashionbn"][0]) > 0
    assert "python -m fashionbn.run, 1 epoch on 64 samples" in result.stdout


@pytest.mark.slow
def test_benchmark_measures_what_precise_statistics_cost(real_data_root, tmp_path):
    result = run_module(
        ["fashionbn.bench", "--precise-bn", "--models", "batchnorm", "--epochs", "1",
         "--repeats", "1", f"data.root={real_data_root}", "data.train_size=2048",
         "data.test_size=500"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["model", "precise_bn", "seconds", "overhead"]
    rows = [line.split() for line in lines[2:]]
    assert [row[:2] for row in rows] == [["batchnorm", "off"], ["batchnorm", "on"]]
    assert rows[0][3] == "+0.0%" and float(rows[1][2]) > 0
