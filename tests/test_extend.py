"""Extending a finished run to more epochs: the same numbers as a run that asked for
them from the start, or a refusal that says why it would not be."""

import json
from pathlib import Path

import pandas as pd
import pytest

from fashionbn import api
from fashionbn.jobs.files import read_metrics
from fashionbn.jobs.job import run_job
from fashionbn.jobs.previous import JobDirError
from tests.conftest import compose_config, run_module, without_seconds

TINY = ["data.train_size=512", "data.test_size=200", "device=cpu", "threads=1"]


def cfg_with(overrides: list[str], epochs: int, real_data_root: Path):
    return compose_config(
        [f"data.root={real_data_root}", *TINY, *overrides, f"epochs={epochs}"]
    )


def status_of(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


# every piece of state a continuation must carry: BatchNorm running statistics,
# momentum buffers, the validation split, precise statistics, Adam's moments
KINDS = [
    ["model=batchnorm", "optim.momentum=0.9", "data.val_size=100", "precise_bn=true"],
    ["model=layernorm", "optim=adam", "optim.lr=0.003"],
    ["model=batchnorm", "diagnostics=on", "diagnostics.every_steps=3"],
]


@pytest.mark.parametrize("overrides", KINDS, ids=["bn-momentum-val", "adam", "diag"])
def test_a_finished_run_continued_in_place_equals_the_longer_run(
    overrides, real_data_root, tmp_path
):
    job_dir = tmp_path / "job"
    two = api.train(cfg_with(overrides, 2, real_data_root), job_dir)
    assert len(two) == 2 and status_of(job_dir)["status"] == "complete"
    four = api.train(cfg_with(overrides, 4, real_data_root), job_dir)
    fresh = api.train(cfg_with(overrides, 4, real_data_root), tmp_path / "fresh")
    assert without_seconds(four) == without_seconds(fresh)
    assert without_seconds(read_metrics(job_dir)) == without_seconds(fresh)
    assert without_seconds(four[:2]) == without_seconds(two)
    status = status_of(job_dir)
    assert (status["status"], status["epochs_done"]) == ("complete", 4)
    assert status["config"]["epochs"] == 4
    assert status["extensions"] == [{"from_epochs": 2, "to_epochs": 4}]
    assert "extensions" not in status_of(tmp_path / "fresh")
    if "diagnostics=on" in overrides:
        extended = pd.read_csv(job_dir / "diagnostics.csv")
        pd.testing.assert_frame_equal(
            extended, pd.read_csv(tmp_path / "fresh" / "diagnostics.csv")
        )
    # the .hydra config of the dir says what it now holds (the aggregate checks it)
    hydra = (job_dir / ".hydra" / "config.yaml").read_text()
    assert "epochs: 4" in hydra
    # and once more: a finished 4-epoch run is skipped, not trained again
    again = api.train(cfg_with(overrides, 4, real_data_root), job_dir)
    assert again == read_metrics(job_dir)


def test_extended_twice_records_both_extensions(real_data_root, tmp_path):
    job_dir = tmp_path / "job"
    for epochs in (1, 2, 3):
        api.train(cfg_with(["model=batchnorm"], epochs, real_data_root), job_dir)
    fresh = api.train(cfg_with(["model=batchnorm"], 3, real_data_root))
    assert without_seconds(read_metrics(job_dir)) == without_seconds(fresh)
    assert status_of(job_dir)["extensions"] == [
        {"from_epochs": 1, "to_epochs": 2},
        {"from_epochs": 2, "to_epochs": 3},
    ]


@pytest.mark.parametrize(
    ("first", "then", "reason"),
    [
        (["diagnostics=on"], ["diagnostics=on"], "diagnostics.every_steps=null"),
        ([], [], "--at-epoch 1"),  # fewer epochs: the dir already holds them
        (["optim.lr=1000", "model=baseline"], ["optim.lr=1000", "model=baseline"],
         "diverged"),
    ],
    ids=["diagnostics-spread-over-epochs", "fewer-epochs", "diverged"],
)  # fmt: skip
def test_a_continuation_that_would_differ_is_refused_with_why(
    first, then, reason, real_data_root, tmp_path
):
    job_dir = tmp_path / "job"
    epochs_first, epochs_then = (3, 1) if reason == "--at-epoch 1" else (1, 3)
    run_job(cfg_with(first, epochs_first, real_data_root), job_dir)
    before = status_of(job_dir)
    with pytest.raises(JobDirError, match="cannot be continued") as error:
        run_job(cfg_with(then, epochs_then, real_data_root), job_dir)
    assert reason in str(error.value)
    assert status_of(job_dir) == before  # the dir is left as it was


def test_another_change_than_epochs_is_still_another_config(real_data_root, tmp_path):
    job_dir = tmp_path / "job"
    run_job(cfg_with([], 1, real_data_root), job_dir)
    with pytest.raises(JobDirError, match="another config"):
        run_job(cfg_with(["optim.lr=0.02"], 2, real_data_root), job_dir)


@pytest.mark.slow
def test_a_two_epoch_sweep_extended_to_four_equals_a_four_epoch_sweep(
    real_data_root, tmp_path
):
    """The acceptance: the CLI, a sweep dir, extend=true."""
    common = [
        "-m", "model=baseline,batchnorm", "seed=0,1", f"data.root={real_data_root}",
        *TINY,
    ]  # fmt: skip

    def sweep(directory: Path, *more: str):
        result = run_module(
            ["fashionbn.run", *common, *more, f"hydra.sweep.dir={directory}"], tmp_path
        )
        assert result.returncode == 0, result.stderr
        return result

    sweep(tmp_path / "a", "epochs=2")
    extended = sweep(tmp_path / "a", "epochs=4", "extend=true")
    sweep(tmp_path / "b", "epochs=4")
    assert extended.stderr.count("starts from the finished 2-epoch run") == 4
    names = sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir())
    assert len(names) == 4
    for name in names:
        assert name.startswith("data.test_size=200,data.train_size=512,epochs=4,")
        longer, fresh = tmp_path / "a" / name, tmp_path / "b" / name
        assert without_seconds(read_metrics(longer)) == without_seconds(
            read_metrics(fresh)
        )
        shorter = name.replace("epochs=4", "epochs=2")
        assert status_of(longer)["extensions"] == [
            {"from_epochs": 2, "to_epochs": 4, "from_dir": shorter}
        ]
        assert len(read_metrics(tmp_path / "a" / shorter)) == 2  # left as it was
    # without extend=true a new dir trains from scratch: nothing is reused silently
    plain = sweep(tmp_path / "a", "epochs=3")
    assert "starts from" not in plain.stderr
