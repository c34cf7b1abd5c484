"""hydra/launcher=batched and fashionbn.core.batched: a cohort trains each run as it
trains alone (bit for bit on the CPU with one thread), isolates a diverging run,
writes the same job dirs as the basic launcher and resumes after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fashionbn.core.batched import Cohort, cohort_key, train_cohort
from fashionbn.core.data import epoch_order, shuffled_batches
from fashionbn.core.train import (
    checked_data,
    start_training,
    torch_threads,
    train_and_evaluate,
)
from fashionbn.jobs.checkpoint import load_checkpoint
from fashionbn.jobs.files import read_metrics, read_status
from fashionbn.jobs.job import run_identity
from tests.conftest import compose_config, run_module, without_seconds

CPU = torch.device("cpu")
# 1000 samples: 15 batches of 64 and a last one of 40
TINY = ["data.train_size=1000", "data.test_size=300", "device=cpu", "threads=1"]


def configs(real_data_root, extra: list[str], lrs=(0.01, 0.1), seeds=(0, 1), epochs=2):
    return [
        compose_config(
            [
                f"data.root={real_data_root}",
                *TINY,
                f"epochs={epochs}",
                f"optim.lr={lr}",
                f"seed={seed}",
                *extra,
            ]
        )  # fmt: skip
        for lr in lrs
        for seed in seeds
    ]


def cohort_records(cfgs, exact_losses: bool = True) -> tuple[list, list]:
    data = checked_data(cfgs[0], None, CPU)
    trainings = [start_training(cfg, CPU) for cfg in cfgs]
    records = [[] for _ in cfgs]
    statuses = train_cohort(cfgs, trainings, data, records, None, exact_losses)
    return records, statuses


KINDS = {
    "baseline": ["model=baseline"],
    "batchnorm": ["model=batchnorm"],
    "bn-momentum-decay-val-precise": [
        "model=batchnorm", "optim.momentum=0.9", "optim.weight_decay=0.001",
        "data.val_size=100", "precise_bn=true",
    ],
    "layernorm": ["model=layernorm"],
    "bn-after-nesterov": [
        "model=batchnorm_after", "optim.momentum=0.5", "optim.nesterov=true",
    ],
    "tanh-normal-init-drop-last": [
        "model.activation=tanh", "model.init=normal", "data.drop_last=true",
        "batch_size=60",
    ],
}  # fmt: skip


@pytest.mark.parametrize("extra", KINDS.values(), ids=KINDS.keys())
def test_a_cohort_trains_every_run_bit_for_bit_as_alone(extra, real_data_root):
    cfgs = configs(real_data_root, extra)
    with torch_threads(1):
        alone = [without_seconds(train_and_evaluate(cfg)) for cfg in cfgs]
        together, statuses = cohort_records(cfgs)
    assert statuses == ["complete"] * len(cfgs)
    assert [without_seconds(r) for r in together] == alone


def test_a_seed_starts_from_the_same_weights_and_batch_order(real_data_root):
    cfgs = configs(real_data_root, ["model=batchnorm"], lrs=(0.1,), seeds=(3, 4))
    trainings = [start_training(cfg, CPU) for cfg in cfgs]
    cohort = Cohort(trainings, cfgs, exact_losses=True)
    for k, cfg in enumerate(cfgs):
        alone = start_training(cfg, CPU)
        for name, param in alone.model.named_parameters():
            assert torch.equal(cohort.params[name][k], param)
        # the single-run path's batches, concatenated, are the cohort's order
        batches = torch.cat(list(shuffled_batches(1000, 64, alone.generator)))
        assert torch.equal(epoch_order(1000, 64, trainings[k].generator), batches)


def test_a_diverging_run_changes_no_other_run(real_data_root):
    steady = configs(real_data_root, ["model=batchnorm"], lrs=(0.01, 0.1), seeds=(0,))
    wild = configs(real_data_root, ["model=baseline"], lrs=(1000,), seeds=(0,))[0]
    wild.model = steady[0].model  # the same architecture: one cohort
    assert cohort_key(run_identity(wild)) == cohort_key(run_identity(steady[0]))
    with torch_threads(1):
        without, _ = cohort_records(steady)
        mixed, statuses = cohort_records([steady[0], wild, steady[1]])
    assert statuses == ["complete", "diverged", "complete"]
    assert len(mixed[1]) == 1  # stopped after the epoch it diverged in
    assert without_seconds(mixed[0]) == without_seconds(without[0])
    assert without_seconds(mixed[2]) == without_seconds(without[1])


def test_runs_that_cannot_share_a_program_are_in_different_cohorts(real_data_root):
    base, bn, momentum = (
        run_identity(configs(real_data_root, extra, lrs=(0.1,), seeds=(0,))[0])
        for extra in (["model=baseline"], ["model=batchnorm"], ["optim.momentum=0.9"])
    )
    other_seed_lr = run_identity(
        configs(real_data_root, ["model=baseline"], lrs=(0.3,), seeds=(7,))[0]
    )
    assert cohort_key(base) == cohort_key(other_seed_lr)
    assert cohort_key(base) != cohort_key(bn)
    assert cohort_key(base) != cohort_key(momentum)


def assert_same(a, b, where: str) -> None:
    """Two checkpoint values equal to the bit (tensors, dicts, lists, tuples)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def sweep(tmp_path: Path, root, directory: str, *more: str):
    result = run_module(
        ["fashionbn.run", "-m", "model=baseline,batchnorm", "seed=0,1", "epochs=2",
         f"data.root={root}", *TINY, f"hydra.sweep.dir={tmp_path / directory}",
         *more],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_the_batched_launcher_writes_the_basic_launchers_job_dirs(
    real_data_root, tmp_path
):
    batched = sweep(tmp_path, real_data_root, "batched", "hydra/launcher=batched")
    sweep(tmp_path, real_data_root, "basic")
    names = sorted(p.name for p in (tmp_path / "basic").iterdir() if p.is_dir())
    assert len(names) == 4
    assert batched.stderr.count("a cohort of 2 runs") == 2  # per architecture
    for name in names:
        job = tmp_path / "batched" / name
        assert without_seconds(read_metrics(job)) == without_seconds(
            read_metrics(tmp_path / "basic" / name)
        )
        status = read_status(job)[0]
        assert status["status"] == "complete"
        assert status["execution"][-1]["launcher"] == "batched"
        assert status["execution"][-1]["cohort"] == 2
        assert (job / ".hydra" / "config.yaml").is_file()
        assert "epoch 2/2" in (job / "run.log").read_text()
        # the checkpoint too: weights, BatchNorm statistics, optimizer, every RNG
        batched_state = load_checkpoint(job)[0].state
        basic_state = load_checkpoint(tmp_path / "basic" / name)[0].state
        assert set(batched_state) == set(basic_state)
        for key in basic_state:
            assert_same(batched_state[key], basic_state[key], key)
    # the same command again skips every job; the basic launcher too
    again = sweep(tmp_path, real_data_root, "batched", "hydra/launcher=batched")
    assert again.stderr.count("already; skipping it") == 4
    basic_on_batched = sweep(tmp_path, real_data_root, "batched")
    assert basic_on_batched.stderr.count("already; skipping it") == 4


@pytest.mark.slow
def test_a_sweep_started_basic_is_finished_batched_and_adam_runs_alone(
    real_data_root, tmp_path
):
    first = run_module(
        ["fashionbn.run", "-m", "model=baseline", "seed=0", "epochs=2",
         f"data.root={real_data_root}", *TINY, f"hydra.sweep.dir={tmp_path / 's'}"],
        tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    result = sweep(tmp_path, real_data_root, "s", "hydra/launcher=batched")
    assert result.stderr.count("already; skipping it") == 1
    assert "a cohort of 1 runs" in result.stderr  # baseline seed 1
    adam = run_module(
        ["fashionbn.run", "-m", "optim=adam", "seed=0", "epochs=1",
         f"data.root={real_data_root}", *TINY, "hydra/launcher=batched",
         f"hydra.sweep.dir={tmp_path / 'adam'}"],
        tmp_path,
    )  # fmt: skip
    assert adam.returncode == 0, adam.stderr
    assert "runs alone, not in a cohort: optim=adam" in adam.stderr
    (job,) = [p for p in (tmp_path / "adam").iterdir() if p.is_dir()]
    assert len(read_metrics(job)) == 1
    # a job dir of another config fails that job, and the sweep exits non-zero
    clash = tmp_path / "clash"
    for lr in ("0.01", "0.5"):
        result = run_module(
            ["fashionbn.run", "-m", "model=baseline", "seed=0,1", "epochs=1",
             f"data.root={real_data_root}", *TINY, f"optim.lr={lr}",
             "hydra.sweep.subdir=${hydra.job.num}", f"hydra.sweep.dir={clash}",
             "hydra/launcher=batched"],
            tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert "another config" in result.stderr
    assert "Traceback" not in result.stderr  # one line, as with the other launchers


SLOW_EPOCHS = """
import runpy, sys, time
import fashionbn.core.batched as batched
real = batched.Cohort.train_epoch
def slow(self, *args, **kwargs):
    time.sleep(0.7)  # room to be killed between epochs
    return real(self, *args, **kwargs)
batched.Cohort.train_epoch = slow
sys.argv[0] = "fashionbn.run"
runpy.run_module("fashionbn.run", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_cohort_killed_mid_run_resumes_to_the_uninterrupted_numbers(
    real_data_root, tmp_path
):
    args = ["-m", "model=batchnorm", "seed=0,1,2", "epochs=4",
            f"data.root={real_data_root}", *TINY, "hydra/launcher=batched"]  # fmt: skip
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_EPOCHS, *args, f"hydra.sweep.dir={killed}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [json.loads(p.read_text())["epochs_done"]
                for p in killed.glob("*/status.json")]  # fmt: skip
        if len(done) == 3 and min(done) >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = [
        read_status(p.parent)[0]["epochs_done"] for p in killed.glob("*/status.json")
    ]
    assert len(done) == 3 and 2 <= min(done) and max(done) < 4, done
    resumed = sweep_args(tmp_path, args, killed)
    assert "resuming" in resumed.stderr
    sweep_args(tmp_path, args, tmp_path / "whole")
    for job in sorted((tmp_path / "whole").glob("*/metrics.csv")):
        twin = killed / job.parent.name
        assert read_status(twin)[0]["status"] == "complete"
        assert without_seconds(read_metrics(twin)) == without_seconds(
            read_metrics(job.parent)
        )


def sweep_args(tmp_path: Path, args: list[str], directory: Path):
    result = run_module(["fashionbn.run", *args, f"hydra.sweep.dir={directory}"],
                        tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_cohort_replays_a_graph_and_stays_close_to_alone(real_data_root):
    cfgs = [
        compose_config(
            [
                f"data.root={real_data_root}",
                "data.train_size=4096",
                "data.test_size=1000",
                "device=cuda",
                "epochs=1",
                f"seed={seed}",
            ]
        )  # fmt: skip
        for seed in (0, 1, 2)
    ]
    cuda = torch.device("cuda")
    data = checked_data(cfgs[0], None, cuda)
    trainings = [start_training(cfg, cuda) for cfg in cfgs]
    records = [[] for _ in cfgs]
    train_cohort(cfgs, trainings, data, records, None, exact_losses=False)
    for cfg, together in zip(cfgs, records):
        alone = train_and_evaluate(cfg)
        assert together[0]["test_acc"] == pytest.approx(alone[0]["test_acc"], abs=0.01)
        assert together[0]["train_loss"] == pytest.approx(
            alone[0]["train_loss"], rel=1e-3
        )


def test_with_two_threads_a_cohort_stays_within_the_stated_tolerance(real_data_root):
    """torch.mm for one run splits its sums across threads unlike torch.bmm: the
    last digits differ (README: the measured differences); pinned here."""
    cfgs = configs(real_data_root, ["model=batchnorm"])
    with torch_threads(2):
        alone = [train_and_evaluate(cfg) for cfg in cfgs]
        together, _ = cohort_records(cfgs)
    for runs in zip(alone, together):
        for a, b in zip(*runs):
            assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.002)
            for loss in ("train_loss", "test_loss"):
                assert b[loss] == pytest.approx(a[loss], rel=1e-3)


def test_after_an_epoch_each_run_holds_what_it_holds_alone(real_data_root):
    """write_back: weights, BatchNorm statistics and the optimizer's momentum, bit
    for bit as the single-run path leaves them after an epoch (one thread)."""
    from fashionbn.core.train import train_epochs, training_state

    cfgs = configs(real_data_root, ["model=batchnorm", "optim.momentum=0.9"], epochs=1)
    with torch_threads(1):
        data = checked_data(cfgs[0], None, CPU)
        trainings = [start_training(cfg, CPU) for cfg in cfgs]
        train_cohort(cfgs, trainings, data, [[] for _ in cfgs])
        for cfg, together in zip(cfgs, trainings):
            alone = start_training(cfg, CPU)
            train_epochs(cfg, alone, data, [])
            a, b = training_state(alone), training_state(together)
            for key in ("model", "optimizer", "generator"):
                assert_same(b[key], a[key], key)
            assert a["optimizer"]["state"]  # there is momentum to compare


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_cohort_logs_each_run_to_tensorboard_and_mlflow(real_data_root, tmp_path):
    from tests.test_loggers import mlflow_client, mlflow_runs, tensorboard_scalars

    sweep(tmp_path, real_data_root, "logged", "hydra/launcher=batched", "logger=all")
    store = tmp_path / "logged" / "mlflow.db"
    runs = mlflow_runs(store)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        model, seed, fixed = run.info.run_name.split(",", 2)  # swept keys first
        job = tmp_path / "logged" / f"{fixed},{model},{seed}"
        expected = [(r["epoch"], r["test_acc"]) for r in read_metrics(job)]
        history = mlflow_client(store).get_metric_history(run.info.run_id, "test_acc")
        assert sorted((m.step, m.value) for m in history) == expected
        assert [step for step, _ in tensorboard_scalars(job)] == [1, 2]
        assert run.data.params["execution.launcher"] == "batched"
