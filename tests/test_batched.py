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
from torch.utils._python_dispatch import TorchDispatchMode

from fashionbn.config.settings import run_identity, run_settings
from fashionbn.core.batched import Cohort, train_cohort
from fashionbn.core.order import epoch_order, shuffled_batches
from fashionbn.core.stacking import StackedLinear, cohort_key
from fashionbn.core.train import (
    checked_data,
    start_training,
    torch_threads,
    train_and_evaluate,
)
from fashionbn.jobs.checkpoint import load_checkpoint
from fashionbn.jobs.files import read_metrics, read_status
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


def cohort_records(cfgs, exact_losses=None, threads=None) -> tuple[list, list]:
    """The runs trained as one cohort at `threads` (None: the runs' own, as the
    launcher sets them; TINY's is 1)."""
    run = run_settings(cfgs[0])
    data = checked_data(run, None, CPU)
    trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
    records = [[] for _ in cfgs]
    with torch_threads(run.threads if threads is None else threads):
        statuses = train_cohort(
            [run_settings(c) for c in cfgs], trainings, data, records, None,
            exact_losses,
        )  # fmt: skip
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


class MatrixProducts(TorchDispatchMode):
    """Counts torch.bmm calls (the matrix products of a backward pass)."""

    def __init__(self):
        super().__init__()
        self.bmm = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.bmm += func is torch.ops.aten.bmm.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("input_needs_grad", [False, True])
def test_a_stacked_layer_forms_the_gradients_one_runs_linear_forms(input_needs_grad):
    """Per run, StackedLinear's gradients are F.linear's bit for bit, and the
    input's gradient is formed only where the input needs one (the first layer's
    images do not: it would be a third of a step's matrix products)."""
    generator = torch.Generator().manual_seed(3)
    x, weight, bias, upstream = (
        torch.randn(*shape, generator=generator)
        for shape in ((2, 5, 7), (2, 3, 7), (2, 3), (2, 5, 3))
    )
    x.requires_grad_(input_needs_grad)
    weight.requires_grad_()
    bias.requires_grad_()
    with MatrixProducts() as counted:
        StackedLinear.apply(x, weight, bias).backward(upstream)
    assert counted.bmm == (2 if input_needs_grad else 1)
    assert (x.grad is not None) == input_needs_grad
    for k in range(2):
        alone = [t[k].detach().clone().requires_grad_() for t in (x, weight, bias)]
        torch.nn.functional.linear(*alone).backward(upstream[k])
        assert torch.equal(weight.grad[k], alone[1].grad)
        assert torch.equal(bias.grad[k], alone[2].grad)
        if input_needs_grad:
            assert torch.equal(x.grad[k], alone[0].grad)


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
    trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
    cohort = Cohort(trainings, [run_settings(c) for c in cfgs], exact_losses=True)
    for k, cfg in enumerate(cfgs):
        alone = start_training(run_settings(cfg), CPU)
        for name, param in alone.model.named_parameters():
            assert torch.equal(cohort.params[name][k], param)
        # the single-run path's batches, concatenated, are the cohort's order
        batches = torch.cat(list(shuffled_batches(1000, 64, alone.generator)))
        assert torch.equal(epoch_order(1000, 64, trainings[k].generator), batches)


def test_a_cpu_cohort_reports_each_runs_own_loss_only_where_it_is_exact(
    real_data_root,
):
    """At one thread each run's loss value is computed as alone (the cohort's
    numbers are bit for bit the run's); with more threads they differ in the last
    digits anyway, and the batched mean is used."""
    cfgs = configs(real_data_root, ["model=baseline"], lrs=(0.1,), seeds=(3, 4))
    runs = [run_settings(c) for c in cfgs]
    for threads, exact in ((1, True), (2, False)):
        with torch_threads(threads):
            trainings = [start_training(run, CPU) for run in runs]
            assert Cohort(trainings, runs).exact_losses is exact
    assert Cohort(trainings, runs, exact_losses=True).exact_losses is True


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
    args = ["-m", "model=batchnorm", "seed=0,1,2", "epochs=4", "optim.momentum=0.9",
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
    data = checked_data(run_settings(cfgs[0]), None, cuda)
    trainings = [start_training(run_settings(cfg), cuda) for cfg in cfgs]
    records = [[] for _ in cfgs]
    train_cohort(
        [run_settings(c) for c in cfgs],
        trainings,
        data,
        records,
        None,
        exact_losses=False,
    )
    for cfg, together in zip(cfgs, records):
        alone = train_and_evaluate(cfg)
        assert together[0]["test_acc"] == pytest.approx(alone[0]["test_acc"], abs=0.01)
        assert together[0]["train_loss"] == pytest.approx(
            alone[0]["train_loss"], rel=1e-3
        )


def test_with_two_threads_a_cohort_stays_within_the_stated_tolerance(real_data_root):
    """torch.mm for one run splits its sums across threads unlike torch.bmm: the
    last digits differ (docs/launchers.md: the measured differences); pinned here."""
    cfgs = configs(real_data_root, ["model=batchnorm", "threads=2"])
    assert {run_settings(cfg).threads for cfg in cfgs} == {2}
    alone = [train_and_evaluate(cfg) for cfg in cfgs]
    together, _ = cohort_records(cfgs)  # the batched mean loss (not exact_losses)
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
        data = checked_data(run_settings(cfgs[0]), None, CPU)
        trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
        train_cohort(
            [run_settings(c) for c in cfgs], trainings, data, [[] for _ in cfgs]
        )
        for cfg, together in zip(cfgs, trainings):
            alone = start_training(run_settings(cfg), CPU)
            train_epochs(run_settings(cfg), alone, data, [])
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


# --- issue 22: what the cohort tests let through, and failures like the others -------


def test_an_epoch_ending_on_one_sample_is_bit_for_bit_as_alone(real_data_root):
    """2001 samples in batches of 50 end every epoch on one sample: the baseline
    trains on it (BatchNorm skips it); torch.bmm rounds a one-sample product
    unlike one run's torch.mm, so that step runs per run."""
    extra = ["data.train_size=2001", "batch_size=50", "optim.lr=0.1"]
    for kind in (["model=baseline"], ["model=layernorm", "optim.momentum=0.9"],
                 ["model=batchnorm"]):  # fmt: skip
        cfgs = [
            compose_config(
                [
                    f"data.root={real_data_root}",
                    "data.test_size=300",
                    "device=cpu",
                    "threads=1",
                    "epochs=2",
                    f"seed={seed}",
                    *extra,
                    *kind,
                ]
            )  # fmt: skip
            for seed in (0, 1)
        ]
        with torch_threads(1):
            alone = [without_seconds(train_and_evaluate(cfg)) for cfg in cfgs]
            together, _ = cohort_records(cfgs)
        assert [without_seconds(r) for r in together] == alone, kind


def test_a_batchnorm_cohort_skips_an_epochs_one_sample_batch_as_alone(real_data_root):
    """1025 = 16 x 64 + 1: the last batch has one sample, which BatchNorm cannot
    train on; alone it is skipped, so in a cohort too."""
    cfgs = [
        compose_config(
            [
                f"data.root={real_data_root}",
                "data.train_size=1025",
                "data.test_size=300",
                "device=cpu",
                "threads=1",
                "epochs=2",
                "model=batchnorm",
                f"seed={seed}",
            ]
        )  # fmt: skip
        for seed in (0, 1)
    ]
    with torch_threads(1):
        alone = [without_seconds(train_and_evaluate(cfg)) for cfg in cfgs]
        together, statuses = cohort_records(cfgs)
    assert statuses == ["complete", "complete"]
    assert [without_seconds(r) for r in together] == alone


def test_runs_leaving_at_different_epochs_leave_the_others_as_alone(
    real_data_root, monkeypatch
):
    """Run 1 stops (diverged) after epoch 1 and run 2 after epoch 2: the cohort
    goes on with the runs by their positions in it, not their first indices."""
    import fashionbn.core.batched as batched

    leaves = {1001.0: 1, 1002.0: 2}  # divergence_loss -> the epoch it stops after
    seen: dict = {}

    def scheduled(train_loss: float, divergence_loss: float) -> bool:
        seen[divergence_loss] = seen.get(divergence_loss, 0) + 1
        return leaves.get(divergence_loss) == seen[divergence_loss]

    cfgs = configs(real_data_root, ["model=batchnorm", "optim.momentum=0.5"],
                   lrs=(0.05,), seeds=(0, 1, 2, 3), epochs=3)  # fmt: skip
    cfgs[1].divergence_loss, cfgs[2].divergence_loss = 1001.0, 1002.0
    with torch_threads(1):
        alone = [without_seconds(train_and_evaluate(cfgs[k])) for k in (0, 3)]
        monkeypatch.setattr(batched, "is_diverged", scheduled)
        together, statuses = cohort_records(cfgs)
    assert statuses == ["complete", "diverged", "diverged", "complete"]
    assert [len(r) for r in together] == [3, 1, 2, 3]
    assert [without_seconds(together[k]) for k in (0, 3)] == alone


def test_after_two_epochs_each_run_holds_what_it_holds_alone(real_data_root):
    """write_back after every epoch, not only the first: the momentum buffers of
    epoch 2 are those of the run alone."""
    from fashionbn.core.train import train_epochs, training_state

    cfgs = configs(real_data_root, ["model=batchnorm", "optim.momentum=0.9"], epochs=2)
    with torch_threads(1):
        data = checked_data(run_settings(cfgs[0]), None, CPU)
        trainings = [start_training(run_settings(cfg), CPU) for cfg in cfgs]
        train_cohort(
            [run_settings(c) for c in cfgs], trainings, data, [[] for _ in cfgs]
        )
        for cfg, together in zip(cfgs, trainings):
            alone = start_training(run_settings(cfg), CPU)
            train_epochs(run_settings(cfg), alone, data, [])
            a, b = training_state(alone), training_state(together)
            for key in ("model", "optimizer", "generator"):
                assert_same(b[key], a[key], key)


def test_the_time_left_counts_the_run_epochs_still_to_come(monkeypatch):
    """Two cohorts of two 3-epoch runs: when the first cohort's runs end, 6 of 12
    run-epochs are trained in 60 s, so the other 6 take about 60 s more."""
    from types import SimpleNamespace

    from fashionbn.jobs import progress

    monkeypatch.setenv(progress.START_VAR, "0.0")
    monkeypatch.setenv(progress.JOBS_VAR, "4")
    clock = [0.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    jobs = [SimpleNamespace(run=SimpleNamespace(epochs=3), job_num=k, name=f"j{k}")
            for k in range(4)]  # fmt: skip
    tracker = progress.CohortProgress({id(job): 3 for job in jobs})
    lines = []
    monkeypatch.setattr(progress.log, "info", lambda fmt, *a: lines.append(fmt % a))
    for job in jobs[:2]:
        tracker.started(job)
    for _ in range(3):
        clock[0] += 20.0
        for job in jobs[:2]:
            tracker.epoch(job)
    tracker.done(jobs[0])
    assert lines[-1] == "job 1/4 done, 1:00 elapsed, about 1:00 left: j0"
    tracker.starts_at(jobs[3], 2)  # resumed after 2 of its 3 epochs: less is left
    tracker.done(jobs[1])
    assert lines[-1] == "job 2/4 done, 1:00 elapsed, about 0:40 left: j1"
    tracker.done(jobs[2], "failed")
    tracker.done(jobs[3], "skipped")
    assert lines[-1] == "job 4/4 skipped, 1:00 elapsed: j3"


def batched_sweep(tmp_path: Path, root, directory: str, *more: str, launcher=True):
    return run_module(
        ["fashionbn.run", "-m", f"data.root={root}", *TINY,
         f"hydra.sweep.dir={tmp_path / directory}", *more,
         *(["hydra/launcher=batched"] if launcher else [])],
        tmp_path,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["batched", "basic"])
def test_one_bad_job_dir_fails_only_its_job(launcher, real_data_root, tmp_path):
    """The issue's case: one job dir whose metrics.csv is a directory took the
    batched sweep down (0 of 4 trained)."""
    bad = tmp_path / "s" / "0"  # job 0: model=baseline, seed=0
    (bad / "metrics.csv").mkdir(parents=True)
    result = batched_sweep(
        tmp_path, real_data_root, "s", "model=baseline,batchnorm", "seed=0,1",
        "epochs=1", "hydra.sweep.subdir=${hydra.job.num}",
        launcher=launcher == "batched",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "metrics.csv is a directory" in result.stderr
    assert "metrics.csv is a directory" in (bad / "run.log").read_text()
    for k in (1, 2, 3):
        assert read_status(tmp_path / "s" / str(k))[0]["status"] == "complete"
    if launcher == "batched":  # progress: every job's line, the ETA, the end
        for k in (1, 2, 3, 4):
            assert f"job {k}/4" in result.stderr
        assert "job 1/4 failed" in result.stderr
        assert "left" in result.stderr


@pytest.mark.slow
def test_a_batched_jobs_bad_input_is_its_error_line_and_its_run_log(
    real_data_root, tmp_path
):
    result = batched_sweep(
        tmp_path, real_data_root, "s", "optim.lr=0.1,nan", "epochs=1",
        "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: optim.lr=nan" in result.stderr
    assert "error: optim.lr=nan" in (tmp_path / "s" / "1" / "run.log").read_text()
    assert read_status(tmp_path / "s" / "0")[0]["status"] == "complete"
    # missing data: every job says so, in its run.log too, and no logger started
    missing = batched_sweep(
        tmp_path, tmp_path / "empty", "m", "seed=0,1", "epochs=1", "logger=all",
        f"data.system_dir={tmp_path / 'nothing'}",
        "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    for k in (0, 1):
        assert (
            "error: FashionMNIST not found"
            in (tmp_path / "m" / str(k) / "run.log").read_text()
        )
    assert not (tmp_path / "m" / "mlflow.db").exists()
    assert not (tmp_path / "m" / "tensorboard").exists()


@pytest.mark.slow
def test_a_model_that_cannot_be_built_fails_its_jobs_only(real_data_root, tmp_path):
    """GroupNorm of 3 groups over 64 units cannot be built: with the cohort size
    left to the launcher (which sizes a cohort by its model), those jobs fail with
    their own line, as under the basic launcher, and the other jobs train."""
    result = batched_sweep(
        tmp_path, real_data_root, "s", "model=groupnorm", "epochs=1",
        "model.norm.num_groups=3,2", "seed=0,1", "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = "must be divisible by num_groups (3)"
    logged = [x for x in result.stderr.splitlines() if "[ERROR]" in x and line in x]
    assert len(logged) == 2  # each bad job's error line, once (Hydra repeats one)
    for k in (0, 1):  # num_groups=3 (seed 0, seed 1), then num_groups=2
        assert line in (tmp_path / "s" / str(k) / "run.log").read_text()
        assert read_status(tmp_path / "s" / str(k + 2))[0]["status"] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["batched", "basic"])
def test_jobs_sharing_a_dir_take_turns_as_under_the_basic_launcher(
    launcher, real_data_root, tmp_path
):
    """hydra.sweep.subdir=x puts both jobs in one dir: the first trains, the second
    finds another config's run there (not 'being trained by another process')."""
    result = batched_sweep(tmp_path, real_data_root, "s", "seed=0,1", "epochs=1",
                           "hydra.sweep.subdir=x",
                           launcher=launcher == "batched")  # fmt: skip
    assert result.returncode == 1
    assert "holds a run of another config (seed: 0 -> 1)" in result.stderr
    assert "being trained by another process" not in result.stderr
    status = read_status(tmp_path / "s" / "x")[0]
    assert (status["status"], status["config"]["seed"]) == ("complete", 0)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["batched", "basic"])
def test_a_sweep_holding_the_same_job_twice_trains_it_once(
    launcher, real_data_root, tmp_path
):
    """seed=1,0,1 and optim.lr=0.1,1e-1 (the sweeper writes both 0.1) give jobs
    the same overrides: each is set up on its own config, the first of a dir
    trains it, the second finds it complete (a hostile pass: the batched launcher
    handed two jobs one config and stopped with a traceback)."""
    result = batched_sweep(tmp_path, real_data_root, "s", "seed=1,0,1",
                           "optim.lr=0.1,1e-1", "epochs=1",
                           launcher=launcher == "batched")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    dirs = sorted(p.parent.name for p in (tmp_path / "s").glob("*/status.json"))
    assert len(dirs) == 2 and all("optim.lr=0.1" in d for d in dirs)
    for name in dirs:
        assert read_status(tmp_path / "s" / name)[0]["status"] == "complete"
        assert len(read_metrics(tmp_path / "s" / name)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_cohort_below_one_is_refused_before_anything_runs(
    value, real_data_root, tmp_path
):
    result = batched_sweep(tmp_path, real_data_root, "s", "seed=0,1", "epochs=1",
                           f"hydra.launcher.max_cohort={value}")  # fmt: skip
    assert result.returncode != 0
    assert f"hydra.launcher.max_cohort={value}: must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()  # not even the sweeper's multirun.yaml


def test_a_run_whose_epoch_cannot_be_saved_fails_alone(real_data_root, tmp_path,
                                                        monkeypatch):  # fmt: skip
    """One job's metrics.csv turned into a directory after its first epoch: that job
    fails with its own dir named; the others of its cohort go on, to the numbers
    they have alone."""
    from fashionbn.jobs.cohort import PendingJob, run_cohorts
    from fashionbn.jobs.writer import JobFiles

    cfgs = configs(real_data_root, ["model=baseline"], lrs=(0.05,), seeds=(0, 1, 2),
                   epochs=3)  # fmt: skip
    jobs = [PendingJob(run_settings(cfg), tmp_path / str(k), tmp_path, str(k), k)
            for k, cfg in enumerate(cfgs)]  # fmt: skip
    for job in jobs:
        job.out_dir.mkdir()
    real_save = JobFiles.save_epoch

    def save_epoch(self, training, records, *args, **kwargs):
        if self.job_dir.name == "0" and len(records) == 2:
            (self.job_dir / "metrics.csv").unlink()
            (self.job_dir / "metrics.csv").mkdir()
        return real_save(self, training, records, *args, **kwargs)

    monkeypatch.setattr(JobFiles, "save_epoch", save_epoch)
    with torch_threads(1):
        run_cohorts(jobs)
        alone = [without_seconds(train_and_evaluate(cfg)) for cfg in cfgs[1:]]
    assert isinstance(jobs[0].result, Exception)
    assert str(tmp_path / "0" / "metrics.csv") in str(jobs[0].result)
    assert "is a directory" in (tmp_path / "0" / "run.log").read_text()
    assert (read_status(tmp_path / "0")[0]["status"],
            read_status(tmp_path / "0")[0]["epochs_done"]) == ("failed", 1)  # fmt: skip
    for k in (1, 2):
        assert read_status(tmp_path / str(k))[0]["status"] == "complete"
        assert without_seconds(read_metrics(tmp_path / str(k))) == alone[k - 1]
        assert jobs[k].result == read_metrics(tmp_path / str(k))[-1]["test_acc"]


@pytest.mark.slow
def test_a_job_hydra_cannot_set_up_fails_alone(real_data_root, tmp_path):
    """A file where a job's dir belongs, under a name the preflight cannot know
    (hydra.sweep.subdir=job<num>): Hydra's own set-up of that job fails; the other
    job of the batched sweep still trains."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "job0").write_text("not a dir")
    result = batched_sweep(tmp_path, real_data_root, "s", "seed=0,1", "epochs=1",
                           "hydra.sweep.subdir=job${hydra.job.num}")  # fmt: skip
    assert result.returncode == 1
    assert "error: job #0 could not be set up (FileExistsError" in result.stderr
    assert read_status(tmp_path / "s" / "job1")[0]["status"] == "complete"
    assert (tmp_path / "s" / "job0").read_text() == "not a dir"


def test_a_cpu_cohort_holds_what_the_largest_cache_holds(tmp_path, monkeypatch):
    """sizing: the largest cache from sysfs (sizes written by hand), and the runs it
    holds: the MLP's 52,650 weights x 3 (weights, gradients, momentum) plus 64
    samples x 1,770 activations, 4 bytes each = 1,084,920 bytes a run."""
    from fashionbn.jobs import sizing

    for index, size in enumerate(["32K", "512K", "32768K", "not a size"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert sizing.cpu_cache_bytes(tmp_path) == 32 * 2**20
    assert sizing.cpu_cache_bytes(tmp_path / "absent") == 8 * 2**20
    run = run_settings(compose_config([]))
    monkeypatch.setattr(sizing, "cpu_cache_bytes", lambda: 32 * 2**20)
    assert sizing.cohort_limit(run, CPU) == 33_554_432 // 1_084_920 == 30
    monkeypatch.setattr(sizing, "cpu_cache_bytes", lambda: 1_000_000)
    assert sizing.cohort_limit(run, CPU) == 1  # never none


def test_runs_are_split_into_even_cohorts_unless_max_cohort_says_otherwise():
    from fashionbn.jobs.sizing import split

    runs = list(range(150))
    even = split(runs, 29, even=True)
    assert [len(c) for c in even] == [25] * 6 and sum(even, []) == runs
    assert [len(c) for c in split(runs[:7], 3, even=True)] == [3, 2, 2]
    assert [len(c) for c in split(runs[:7], 3, even=False)] == [3, 3, 1]
    assert split(runs[:2], 30, even=True) == [[0, 1]]
