"""A job dir's life cycle on real (small) data: resume only what can be trusted,
refuse what must not be touched, repair what can be repaired, one process at a time."""

import errno
import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fashionbn.core.evaluation
import fashionbn.core.train
from fashionbn.config import FashionbnError
from fashionbn.config.settings import run_identity, run_settings
from fashionbn.jobs.checkpoint import CHECKPOINT_MAGIC, load_checkpoint
from fashionbn.jobs.files import (
    RESULTS_FORMAT,
    WriteError,
    atomic_write,
    read_metrics,
    read_status,
)
from fashionbn.jobs.job import JobBusy, JobDirError, run_job
from fashionbn.jobs.reading import read_job
from tests.conftest import compose_config, kill_run, without_seconds


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Runs with threads=N set torch's thread count for the process: restore it, so
    every other test computes with the same count (BatchNorm's last digits)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def overrides(small_real_overrides) -> list[str]:
    """BatchNorm (running stats and all RNGs matter), 3 epochs on a real subset."""
    return [*small_real_overrides, "model=batchnorm", "epochs=3"]


def must_not_train(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("trained although it must not")

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", fail)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, real_data_root) -> dict:
    """metrics of uninterrupted runs, by optim.lr, for comparison."""
    base = [f"data.root={real_data_root}", "data.train_size=2048",
            "data.test_size=1000", "device=cpu", "model=batchnorm",
            "epochs=3"]  # fmt: skip
    return {
        lr: without_seconds(
            run_job(
                compose_config([*base, f"optim.lr={lr}"]),
                tmp_path_factory.mktemp(f"whole-{lr}"),
            )
        )
        for lr in (0.001, 0.01)
    }


# --- #3: never continue another configuration's checkpoint -------------------------


@pytest.mark.slow
def test_a_damaged_status_never_lets_another_config_continue(
    overrides, tmp_path, monkeypatch, uninterrupted
) -> None:
    """The issue's sequence: lr=0.01 killed after 2 epochs, its status.json damaged,
    then lr=0.001 started in the same dir."""
    job_dir = tmp_path / "job"
    lr_01 = compose_config([*overrides, "optim.lr=0.01"])
    lr_001 = compose_config([*overrides, "optim.lr=0.001"])
    kill_run(lr_01, job_dir, monkeypatch, epochs=2)
    status_text = (job_dir / "status.json").read_text()
    (job_dir / "status.json").write_text(status_text[:40])  # truncated
    with pytest.raises(
        JobDirError, match=r"another config \(optim.lr: 0.01 -> 0.001\)"
    ):
        run_job(lr_001, job_dir)
    assert len(load_checkpoint(job_dir)[0].records) == 2  # refused, nothing touched
    # the same request, once the other run's checkpoint is damaged too
    (job_dir / "checkpoint.pt").write_bytes(b"garbage")
    kill_run(lr_001, job_dir, monkeypatch, epochs=0)  # fresh start, killed in epoch 1
    assert not (job_dir / "checkpoint.pt").exists()  # the old files are gone
    assert read_status(job_dir)[0]["config"]["optim"]["lr"] == 0.001
    records = run_job(lr_001, job_dir)
    assert without_seconds(records) == uninterrupted[0.001]
    assert without_seconds(read_metrics(job_dir)) == uninterrupted[0.001]
    assert read_status(job_dir)[0]["status"] == "complete"


@pytest.mark.slow
def test_a_changed_checkpoint_is_not_trusted(
    overrides, tmp_path, monkeypatch, caplog, uninterrupted
) -> None:
    cfg = compose_config([*overrides, "optim.lr=0.001"])
    kill_run(cfg, tmp_path, monkeypatch, epochs=2)
    path = tmp_path / "checkpoint.pt"
    raw = path.read_bytes()
    header, _, payload = raw[len(CHECKPOINT_MAGIC) :].partition(b"\n")
    # one weight changed, re-serialised by torch, the header left as it was
    state = torch.load(io.BytesIO(payload), weights_only=False)
    state["model"]["1.weight"][0, 0] += 1.0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(CHECKPOINT_MAGIC + header + b"\n" + buffer.getvalue())
    assert load_checkpoint(tmp_path)[1] in (
        "checkpoint.pt does not match its digest (changed or damaged)",
        f"checkpoint.pt is truncated or damaged ({len(buffer.getvalue())} of "
        f"{len(payload)} bytes)",
    )
    records = run_job(cfg, tmp_path)
    assert without_seconds(records) == uninterrupted[0.001]
    assert "nothing there can be trusted to continue from" in caplog.text
    assert "starts again from epoch 1" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda raw: raw[: len(raw) // 2], "truncated or damaged"),
        (lambda raw: b"", "is not a checkpoint of this fashionbn"),
        (lambda raw: os.urandom(1000), "is not a checkpoint of this fashionbn"),
        (lambda raw: raw[:30], "has a damaged header"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "does not match its digest"),
    ],
    ids=["half", "empty", "garbage", "header", "one-bit"],
)
def test_a_damaged_checkpoint_restarts_cleanly(
    damage, problem, overrides, tmp_path, monkeypatch, caplog, uninterrupted
) -> None:
    cfg = compose_config([*overrides, "optim.lr=0.001"])
    kill_run(cfg, tmp_path, monkeypatch, epochs=2)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    assert problem in load_checkpoint(tmp_path)[1]
    records = run_job(cfg, tmp_path)
    assert problem in caplog.text and "starts again from epoch 1" in caplog.text
    assert without_seconds(records) == uninterrupted[0.001]


@pytest.mark.slow
@pytest.mark.parametrize(
    "status_text, problem",
    [
        ("[]", "status.json holds a list, not a record"),
        ("{}", "status.json lacks status, epochs_done, config"),
        ('{"epochs_done": 2, "config": {"seed": 0}}', "status.json lacks status"),
        ("", "status.json is unreadable (JSONDecodeError"),
    ],
)
def test_a_damaged_status_resumes_from_an_intact_checkpoint(
    status_text, problem, overrides, tmp_path, monkeypatch, caplog, uninterrupted
) -> None:
    cfg = compose_config([*overrides, "optim.lr=0.001"])
    kill_run(cfg, tmp_path, monkeypatch, epochs=2)
    (tmp_path / "status.json").write_text(status_text)
    assert problem in read_status(tmp_path)[1]
    real, calls = fashionbn.core.train.train_one_epoch, []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", counting)
    records = run_job(cfg, tmp_path)
    assert len(calls) == 1  # only epoch 3 was trained
    assert problem in caplog.text and "continuing from checkpoint.pt" in caplog.text
    assert without_seconds(records) == uninterrupted[0.001]
    assert "another config" not in caplog.text


@pytest.mark.slow
def test_a_finished_run_with_damaged_metrics_is_restored(
    overrides, tmp_path, monkeypatch, caplog
) -> None:
    cfg = compose_config(overrides)
    full = run_job(cfg, tmp_path)
    metrics = (tmp_path / "metrics.csv").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.csv").write_text("".join(metrics[:-1]))  # truncated
    assert (
        "metrics.csv has 2 epochs but status.json says 3" in read_job(tmp_path).problem
    )  # the aggregate skips it, saying what to do
    must_not_train(monkeypatch)
    assert run_job(cfg, tmp_path) == full
    assert read_metrics(tmp_path) == full
    assert "restoring it from checkpoint.pt" in caplog.text
    assert read_job(tmp_path).problem is None  # aggregatable again
    # an edited value is caught by the digest and restored the same way
    text = (tmp_path / "metrics.csv").read_text()
    last_acc = repr(full[-1]["test_acc"])
    (tmp_path / "metrics.csv").write_text(text.replace(last_acc, "0.99"))
    assert run_job(cfg, tmp_path) == full
    assert "changed after the run wrote it" in caplog.text


@pytest.mark.slow
def test_a_finished_run_with_nothing_to_restore_from_is_refused(
    overrides, tmp_path, monkeypatch
) -> None:
    cfg = compose_config(overrides)
    run_job(cfg, tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    must_not_train(monkeypatch)
    with pytest.raises(JobDirError) as info:
        run_job(cfg, tmp_path)
    message = str(info.value)
    assert "status.json says complete after 3 epochs, but metrics.csv has columns" in (
        message
    )
    assert "checkpoint.pt is not a checkpoint of this fashionbn" in message
    assert message.endswith("force=true discards it and trains again")


@pytest.mark.slow
def test_a_kill_after_the_last_checkpoint_finishes_without_training(
    overrides, tmp_path, monkeypatch
) -> None:
    """The last epoch's checkpoint was written, then the kill came: metrics.csv and
    status.json still say 2 epochs. The re-run completes them without training."""
    cfg = compose_config(overrides)
    full = run_job(cfg, tmp_path)
    checkpoint = load_checkpoint(tmp_path)[0]
    assert checkpoint.status == "complete" and len(checkpoint.records) == 3
    metrics = (tmp_path / "metrics.csv").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.csv").write_text("".join(metrics[:-1]))
    status = json.loads((tmp_path / "status.json").read_text())
    status |= {"status": "running", "epochs_done": 2}
    (tmp_path / "status.json").write_text(json.dumps(status))
    must_not_train(monkeypatch)
    assert run_job(cfg, tmp_path) == full
    assert read_metrics(tmp_path) == full
    assert read_status(tmp_path)[0]["status"] == "complete"


@pytest.mark.slow
def test_a_diverged_checkpoint_is_never_trained_further(
    small_real_overrides, tmp_path, monkeypatch
) -> None:
    cfg = compose_config([*small_real_overrides, "optim.lr=100", "epochs=3"])
    records = run_job(cfg, tmp_path)
    assert len(records) == 1 and read_status(tmp_path)[0]["status"] == "diverged"
    status = json.loads((tmp_path / "status.json").read_text())
    status |= {"status": "running", "epochs_done": 0}  # killed before status.json
    (tmp_path / "status.json").write_text(json.dumps(status))
    must_not_train(monkeypatch)
    assert run_job(cfg, tmp_path) == records
    assert read_status(tmp_path)[0]["status"] == "diverged"


# --- #7: one process per job dir ---------------------------------------------------


@pytest.mark.slow
def test_a_job_dir_in_use_is_skipped_and_a_dead_holder_recovered(
    overrides, tmp_path, monkeypatch
) -> None:
    cfg = compose_config(overrides)
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid %d' % "
         "os.getpid()); print('locked', flush=True); time.sleep(60)",
         str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JobBusy, match=f"another process \\(pid {holder.pid}\\)"):
            run_job(cfg, tmp_path)
        assert not (tmp_path / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert len(run_job(cfg, tmp_path)) == 3  # the dead holder's lock is gone
    fd = os.open(tmp_path / ".lock", os.O_RDONLY)
    try:  # and the run released its own lock when it ended
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_the_aggregate_names_who_is_training_a_running_job(
    overrides, tmp_path, monkeypatch
) -> None:
    kill_run(compose_config(overrides), tmp_path, monkeypatch, epochs=1)
    assert read_job(tmp_path).problem == "incomplete: 1 of 3 epochs"
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"pid 4242 on here since now\n", 0)
        assert read_job(tmp_path).problem == (
            "incomplete: 1 of 3 epochs (being trained right now by pid 4242 on here "
            "since now)"
        )
    finally:
        os.close(fd)


# --- #10: a full disk --------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_status_agrees(
    overrides, tiny_tmpfs, uninterrupted
) -> None:
    cfg = compose_config([*overrides, "optim.lr=0.001"])
    job_dir = tiny_tmpfs / "job"  # 300 KB: one checkpoint (~230 KB) fits, two do not
    with pytest.raises(WriteError) as info:
        run_job(cfg, job_dir)
    assert str(info.value) == (
        f"cannot write {job_dir / 'checkpoint.pt'}: no space left on device; free "
        "some space (or use another hydra.sweep.dir) and re-run the same command: "
        "it continues after epoch 1"
    )
    status = read_status(job_dir)[0]
    assert (status["status"], status["epochs_done"]) == ("failed", 1)
    assert len(read_metrics(job_dir)) == 1
    assert len(load_checkpoint(job_dir)[0].records) == 1
    assert not list(job_dir.glob(".*partial*"))


@pytest.mark.slow
def test_a_write_error_mid_run_keeps_status_and_files_in_step(
    overrides, tmp_path, monkeypatch, uninterrupted
) -> None:
    """The same without a real small disk: the 2nd checkpoint write gets ENOSPC."""

    import fashionbn.core.atomic

    real_fdopen, writes = os.fdopen, []

    class FullFile:
        """A file whose writes fail as on a full disk."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_at_second_checkpoint(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "checkpoint.pt.partial" in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == 2:
                return FullFile(f)
        return f

    cfg = compose_config([*overrides, "optim.lr=0.001"])
    monkeypatch.setattr(fashionbn.core.atomic.os, "fdopen", full_at_second_checkpoint)
    with pytest.raises(WriteError, match="no space left on device; free some space"):
        run_job(cfg, tmp_path)
    status = read_status(tmp_path)[0]
    assert (status["status"], status["epochs_done"]) == ("failed", 1)
    assert len(read_metrics(tmp_path)) == 1
    monkeypatch.undo()
    assert without_seconds(run_job(cfg, tmp_path)) == uninterrupted[0.001]


# --- #13, #14: the identity is what determines the numbers --------------------------


@pytest.mark.slow
def test_where_and_how_a_run_ran_is_not_another_config(
    overrides, tmp_path, monkeypatch
) -> None:
    run_job(compose_config([*overrides, "device=auto"]), tmp_path)
    must_not_train(monkeypatch)
    for changed in (["device=cpu"], ["data.eval_batch_size=100"], ["threads=1"]):
        assert len(run_job(compose_config([*overrides, *changed]), tmp_path)) == 3
    with pytest.raises(JobDirError, match=r"another config \(batch_size: 64 -> 32\)"):
        run_job(compose_config([*overrides, "batch_size=32"]), tmp_path)


@pytest.mark.slow
def test_a_resume_with_another_thread_count_says_so(
    overrides, tmp_path, monkeypatch, caplog
) -> None:
    kill_run(compose_config([*overrides, "threads=2"]), tmp_path, monkeypatch, 1)
    run_job(compose_config([*overrides, "threads=1"]), tmp_path)
    assert "its numbers may differ in the last digits" in caplog.text
    threads = [e["torch_threads"] for e in read_status(tmp_path)[0]["execution"]]
    assert threads == [2, 1]


@pytest.mark.slow
def test_results_of_an_older_fashionbn_are_not_taken_for_current(
    overrides, tmp_path, monkeypatch
) -> None:
    cfg = compose_config(overrides)
    run_job(cfg, tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    del status["format"]  # what fashionbn wrote before results formats existed
    (tmp_path / "status.json").write_text(json.dumps(status))
    with monkeypatch.context() as patch:
        must_not_train(patch)
        with pytest.raises(JobDirError) as info:
            run_job(cfg, tmp_path)
    assert "holds results of an older fashionbn (results format 1; this version " in (
        str(info.value)
    )
    assert "force=true discards it" in str(info.value)
    cfg.force = True
    assert len(run_job(cfg, tmp_path)) == 3
    assert read_status(tmp_path)[0]["format"] == RESULTS_FORMAT


def test_input_errors_leave_the_dir_untouched(tmp_path) -> None:
    with pytest.raises(FashionbnError, match="epochs=0: must be >= 1"):
        run_job(compose_config(["epochs=0"]), tmp_path / "job")
    assert not (tmp_path / "job").exists()


@pytest.mark.slow
def test_a_refusal_names_real_differences_only(small_real_overrides, tmp_path) -> None:
    """A status.json written before model.batch_norm became model.norm still refuses
    another config with just the key that differs."""
    base = [*small_real_overrides, "model=batchnorm"]
    run_job(compose_config([*base, "optim.lr=0.01"]), tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    model = status["config"]["model"]
    model["batch_norm"] = model.pop("norm") == "batchnorm"
    model["bn_placement"], model["bn_eps"] = (
        model.pop("norm_placement"), model.pop("norm_eps"),
    )  # fmt: skip
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert len(run_job(compose_config([*base, "optim.lr=0.01"]), tmp_path)) == 1
    with pytest.raises(JobDirError) as info:
        run_job(compose_config([*base, "optim.lr=0.001"]), tmp_path)
    assert "another config (optim.lr: 0.01 -> 0.001); refusing" in str(info.value)


@pytest.mark.slow
def test_skipping_a_finished_run_does_not_read_its_checkpoint(
    overrides, tmp_path, monkeypatch
) -> None:
    import fashionbn.jobs.extension
    import fashionbn.jobs.previous

    cfg = compose_config(overrides)
    full = run_job(cfg, tmp_path)

    def must_not_load(job_dir):
        raise AssertionError("the checkpoint was read for an intact finished run")

    for module in (fashionbn.jobs.previous, fashionbn.jobs.extension):
        monkeypatch.setattr(module, "load_checkpoint", must_not_load)
    must_not_train(monkeypatch)
    assert run_job(cfg, tmp_path) == full


# --- issue 15: checkpoints load without pickle; files reach the disk -----------------


class RunsCodeWhenUnpickled:
    """What a tampered checkpoint could hold: unpickling it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_never_loaded(tmp_path) -> None:
    from fashionbn.jobs.checkpoint import Checkpoint, save_checkpoint

    marker = tmp_path / "code-ran"
    state = {"model": {}, "evil": RunsCodeWhenUnpickled(marker)}
    identity = run_identity(compose_config([]))  # a header that passes its checks
    save_checkpoint(tmp_path, Checkpoint(identity, "running", [], state))
    assert not marker.exists()
    checkpoint, problem = load_checkpoint(tmp_path)  # its digest is right
    assert checkpoint is None and not marker.exists()
    assert "holds more than tensors and plain values" in problem


@pytest.mark.parametrize(
    "optim", [["optim.momentum=0.9"], ["optim=adam"], []], ids=["momentum", "adam",
                                                              "plain"]
)  # fmt: skip
def test_every_training_state_round_trips_without_pickle(tmp_path, optim) -> None:
    """Weights, optimizer state and every RNG (torch, numpy, python, the shuffle
    generator) come back from a weights_only checkpoint exactly."""
    import random

    import numpy as np

    from fashionbn.core.train import restore_training, start_training, training_state
    from fashionbn.jobs.checkpoint import Checkpoint, save_checkpoint

    cfg = compose_config(["model=batchnorm", "model.hidden=[4]", *optim])
    training = start_training(run_settings(cfg), torch.device("cpu"))
    model, optimizer = training.model, training.optimizer
    for _ in range(2):  # optimizer state (momentum buffers, Adam's moments)
        for p in model.parameters():
            p.grad = None
        model(torch.rand(8, 28, 28)).sum().backward()
        optimizer.step()
    np.random.standard_normal()  # numpy's cached gaussian is part of its state
    save_checkpoint(tmp_path, Checkpoint(run_identity(cfg), "running", [{"epoch": 1}],
                                         training_state(training)))  # fmt: skip
    expected = (torch.rand(3), np.random.rand(3), random.random(),
                torch.rand(3, generator=training.generator))  # fmt: skip
    checkpoint, problem = load_checkpoint(tmp_path)
    assert problem is None and checkpoint.records == [{"epoch": 1}]
    again = start_training(run_settings(cfg), torch.device("cpu"))
    restore_training(again, checkpoint.state)
    got = (torch.rand(3), np.random.rand(3), random.random(),
           torch.rand(3, generator=again.generator))  # fmt: skip
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])
    for key, value in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value)
    assert str(again.optimizer.state_dict()) == str(optimizer.state_dict())


def test_files_reach_the_disk_before_they_are_renamed(tmp_path, monkeypatch) -> None:
    """checkpoint.pt, status.json and the csv files: fsync of the file's data, then
    the rename, then fsync of the directory (network filesystems, power cuts)."""
    import fashionbn.core.atomic
    from fashionbn.jobs.checkpoint import Checkpoint, save_checkpoint
    from fashionbn.jobs.files import write_metrics, write_status

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(fashionbn.core.atomic.os, "fsync", fsync)
    monkeypatch.setattr(fashionbn.core.atomic.os, "replace", replace)
    identity = run_identity(compose_config([]))
    save_checkpoint(tmp_path, Checkpoint(identity, "running", [], {}))
    write_status(tmp_path, "running", identity, 0)
    write_metrics([], tmp_path)
    for name in ("checkpoint.pt", "status.json", "metrics.csv"):
        renames = [e for e in events if e[0] == "replace" and e[2].endswith(name)]
        assert len(renames) == 1, name
        at = events.index(renames[0])
        assert events[at - 1] == ("fsync", renames[0][1])  # the partial file's data
        assert events[at + 1] == ("fsync", str(tmp_path))  # then the rename itself


# --- resume, skip, refuse (in-process, real data) -------------------------------


@pytest.fixture
def cfg3(small_real_overrides):
    """BatchNorm (running stats and all RNGs matter), 3 epochs on a real subset."""
    return compose_config([*small_real_overrides, "model=batchnorm", "epochs=3"])


@pytest.mark.slow
def test_interrupted_run_resumes_with_identical_numbers(cfg3, tmp_path, monkeypatch):
    uninterrupted = run_job(cfg3, tmp_path / "whole")

    real_evaluate, calls = fashionbn.core.evaluation.evaluate, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fashionbn.core.evaluation, "evaluate", evaluate_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(cfg3, tmp_path / "split")
    status = read_status(tmp_path / "split")[0]
    assert status["status"] == "failed" and status["epochs_done"] == 1
    assert "simulated crash" in status["error"]
    assert len(read_metrics(tmp_path / "split")) == 1

    monkeypatch.setattr(fashionbn.core.evaluation, "evaluate", real_evaluate)
    resumed = run_job(cfg3, tmp_path / "split")
    assert without_seconds(resumed) == without_seconds(uninterrupted)
    assert without_seconds(read_metrics(tmp_path / "split")) == without_seconds(
        read_metrics(tmp_path / "whole")
    )
    assert read_status(tmp_path / "split")[0]["status"] == "complete"


@pytest.mark.slow
def test_complete_run_is_skipped_not_retrained(cfg3, tmp_path, monkeypatch) -> None:
    first = run_job(cfg3, tmp_path)
    before = (tmp_path / "metrics.csv").stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", must_not_train)
    again = run_job(cfg3, tmp_path)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in first]
    assert (tmp_path / "metrics.csv").stat().st_mtime_ns == before


@pytest.mark.slow
def test_changed_config_is_refused_and_nothing_is_mixed(cfg3, tmp_path) -> None:
    run_job(cfg3, tmp_path)
    original = (tmp_path / "metrics.csv").read_text()
    cfg3.optim.lr = 0.01
    with pytest.raises(FashionbnError, match=r"optim.lr: 0.001 -> 0.01.*force=true"):
        run_job(cfg3, tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == original  # nothing mixed in
    # where the data lives is not part of what a run computes: still "the same run"
    cfg3.optim.lr = 0.001
    cfg3.data.root = str(tmp_path / "elsewhere")  # not read: the run is complete
    assert len(run_job(cfg3, tmp_path)) == 3


@pytest.mark.slow
def test_force_discards_the_old_run(cfg3, small_real_overrides, tmp_path) -> None:
    run_job(cfg3, tmp_path)
    changed = compose_config(
        [*small_real_overrides, "model=batchnorm", "epochs=2", "force=true"]
    )
    records = run_job(changed, tmp_path)
    assert len(records) == 2 and len(read_metrics(tmp_path)) == 2
    assert read_status(tmp_path)[0]["config"]["epochs"] == 2


@pytest.mark.slow
def test_divergence_ends_the_run_with_its_own_status(small_real_overrides, tmp_path):
    cfg = compose_config([*small_real_overrides, "optim.lr=100", "epochs=3"])
    records = run_job(cfg, tmp_path)
    assert len(records) == 1  # stopped after the epoch that blew up
    assert records[0]["train_loss"] > cfg.divergence_loss
    status = read_status(tmp_path)[0]
    assert status["status"] == "diverged" and status["epochs_done"] == 1
    # a diverged run is finished: re-running the sweep does not repeat it
    assert len(run_job(cfg, tmp_path)) == 1


# --- crash-safe writes -----------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("old, complete content\n")

    def write_half_then_die(f) -> None:
        f.write("half of the new")
        raise KeyboardInterrupt  # what a kill looks like from inside

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_half_then_die)
    assert target.read_text() == "old, complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
