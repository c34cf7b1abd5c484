"""fashionbn.api: what a notebook calls, checked against the CLI's own paths."""

import re

import pytest
import torch

from fashionbn import api
from fashionbn.config import ConfigError, FashionbnError
from fashionbn.core.data import load_dataset
from fashionbn.jobs.job import run_job
from tests.conftest import REPO, without_seconds


@pytest.fixture
def small(real_data_root) -> list[str]:
    return [f"data.root={real_data_root}", "data.train_size=1024",
            "data.test_size=500", "epochs=2", "device=cpu"]  # fmt: skip


def test_config_composes_like_the_cli_and_refuses_values_that_cannot_work() -> None:
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    assert OmegaConf.to_container(api.config(["model=batchnorm"])) == (
        OmegaConf.to_container(compose_config(["model=batchnorm"]))
    )
    with pytest.raises(ConfigError, match="epochs=0: must be >= 1"):
        api.config(["epochs=0"])


@pytest.mark.slow
def test_train_in_memory_and_into_a_job_dir_give_the_same_numbers(small, tmp_path):
    threads = torch.get_num_threads()
    cfg = api.config([*small, "model=batchnorm", "threads=1"])
    in_memory = api.train(cfg)
    assert torch.get_num_threads() == threads  # put back
    on_disk = api.train(cfg, tmp_path / "job")
    assert torch.get_num_threads() == threads
    assert without_seconds(in_memory) == without_seconds(on_disk)
    assert (tmp_path / "job" / ".hydra" / "config.yaml").is_file()
    assert without_seconds(run_job(cfg, tmp_path / "job")) == without_seconds(on_disk)


@pytest.mark.slow
def test_a_loaded_model_gives_the_recorded_test_accuracy(small, tmp_path) -> None:
    cfg = api.config([*small, "model=batchnorm", "optim.lr=0.1"])
    records = api.train(cfg, tmp_path / "job")
    model = api.load_model(tmp_path / "job")
    assert not model.training
    data = load_dataset(cfg.data)
    with torch.no_grad():
        predicted = model(data.test_images).argmax(dim=1)
    accuracy = (predicted == data.test_labels).sum().item() / len(data.test_labels)
    assert accuracy == records[-1]["test_acc"]


def test_load_model_says_why_it_cannot(tmp_path) -> None:
    with pytest.raises(FashionbnError, match="there is no status.json: no run"):
        api.load_model(tmp_path)


@pytest.mark.slow
def test_the_docs_api_example_runs_as_written(real_data_root, tmp_path, monkeypatch):
    readme = (REPO / "docs" / "analysis.md").read_text()
    block = re.search(
        r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", readme,
        re.S,
    ).group(1)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(real_data_root)  # the example's default data.root
    namespace: dict = {}
    exec(compile(block, "docs/analysis.md", "exec"), namespace)
    sweep = namespace["sweep"]
    assert sweep.summary["n"].tolist() == [2, 2, 2, 2]
    assert sweep.comparisons["comparison"].tolist() == ["batchnorm − baseline"] * 2
    assert not namespace["model"].training


# --- issue 22: the API validates like the command and says what it left out -----------


@pytest.fixture
def hand_made_sweep(tmp_path):
    """Both models x seeds 0, 1 (hand-made job dirs), plus a diverged run, a
    damaged one and a copy of a run."""
    import shutil

    from tests.conftest import make_job_dir

    sweep = tmp_path / "sweep"
    for model, accuracy in (("baseline", 0.6), ("batchnorm", 0.8)):
        for seed in (0, 1):
            name = f"model={model},seed={seed}"
            make_job_dir(sweep / name, [f"model={model}", f"seed={seed}"],
                         [accuracy - 0.1, accuracy + seed / 100])  # fmt: skip
    make_job_dir(sweep / "diverged", ["model=batchnorm", "seed=5", "optim.lr=9"],
                 [0.1, 0.1], status="diverged")  # fmt: skip
    damaged = make_job_dir(sweep / "damaged", ["model=baseline", "seed=7"], [0.5, 0.6])
    (damaged / "metrics.csv").write_text("epoch,train_loss\n")
    shutil.copytree(sweep / "model=baseline,seed=0", tmp_path / "copy")
    return sweep


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ({"metric": "running"}, "metric='running': choose default or precise"),
        ({"metric": "Default"}, "metric='Default'"),
        ({"baseline": "groupnorm"}, "no complete run has model=groupnorm"),
        ({"select_by": "accuracy"}, "select_by='accuracy': choose one of"),
        ({"at_epoch": "2"}, "at_epoch='2': give an epoch number >= 1"),
        ({"at_epoch": 0}, "at_epoch=0"),
        ({"at_epoch": True}, "at_epoch=True"),
        ({"precision": 0}, "precision=0: give the wanted 95 % interval"),
        ({"precision": float("nan")}, "precision=nan"),
    ],
)
def test_load_sweep_refuses_what_the_command_refuses(option, says, hand_made_sweep):
    from fashionbn.analysis.options import OptionError

    with pytest.raises(OptionError) as refused:
        api.load_sweep(hand_made_sweep, **option)
    assert says in str(refused.value)


def test_load_sweep_lists_every_run_it_left_out(hand_made_sweep, tmp_path):
    loaded = api.load_sweep(hand_made_sweep, tmp_path / "copy")
    left_out = loaded.skipped.set_index("run")
    assert sorted(loaded.skipped["kind"]) == ["diverged", "duplicate", "skipped"]
    assert "metrics.csv has columns" in left_out.loc[
        str(hand_made_sweep / "damaged"), "reason"]  # fmt: skip
    original = hand_made_sweep / "model=baseline,seed=0"
    assert left_out.loc[str(original), "reason"] == f"same run as {tmp_path / 'copy'}"
    assert loaded.results["run"].nunique() == 4
    # the reference by name works as the command's --baseline does
    flipped = api.load_sweep(hand_made_sweep, baseline="batchnorm")
    assert set(flipped.comparisons["comparison"]) == {"baseline − batchnorm"}


@pytest.mark.slow
def test_load_model_refuses_diverged_and_unfinished_runs_unless_asked(
    small, tmp_path, monkeypatch
):
    from tests.conftest import kill_run

    diverged = tmp_path / "diverged"
    api.train(api.config([*small, "optim.lr=10000"]), diverged)
    with pytest.raises(FashionbnError, match="diverged at epoch 1"):
        api.load_model(diverged)
    assert not api.load_model(diverged, allow_diverged=True).training
    unfinished = tmp_path / "unfinished"
    kill_run(api.config([*small, "epochs=3"]), unfinished, monkeypatch, epochs=1)
    with pytest.raises(FashionbnError, match=r"not finished \(running after 1 of 3"):
        api.load_model(unfinished)
    assert not api.load_model(unfinished, allow_unfinished=True).training


@pytest.mark.slow
def test_train_into_a_refused_dir_leaves_it_as_it_was(small, tmp_path):
    from fashionbn.jobs.job import JobDirError

    job = tmp_path / "job"
    run_job(api.config([*small, "epochs=1"]), job)  # a run, without .hydra

    def files() -> dict:  # (.lock says who held it last, and when)
        return {p.name: p.read_bytes() for p in job.iterdir()
                if p.is_file() and p.name != ".lock"}  # fmt: skip

    before = files()
    with pytest.raises(JobDirError, match="another config"):
        api.train(api.config([*small, "epochs=1", "optim.lr=0.5"]), job)
    assert not (job / ".hydra").exists()
    assert files() == before


@pytest.mark.slow
def test_a_sweep_from_the_api_is_the_commands_multirun(small, tmp_path, capsys):
    """api.sweep: the command's job dirs (by Hydra's names), its numbers (the same
    run trained alone by api.train), skipped when called again; a failing job is
    SweepFailed with its error line; a string for the overrides is refused."""
    sweep_dir = tmp_path / "sweep"
    overrides = ["model=baseline,batchnorm", "seed=3", "threads=1", *small]
    loaded = api.sweep(overrides, sweep_dir)
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert len(names) == 2 and all("seed=3" in n for n in names)
    assert [("model=baseline" in n, "model=batchnorm" in n) for n in names] == [
        (True, False), (False, True)]  # fmt: skip
    assert sorted(loaded.results["model"].unique()) == ["baseline", "batchnorm"]
    assert "cohort" in capsys.readouterr().out  # the command's lines, echoed
    alone = api.train(api.config([o.split(",")[0] for o in overrides]))
    baseline = loaded.results.query("model == 'baseline'")  # one row per epoch
    assert baseline["epoch"].tolist() == [1, 2]
    assert baseline["test_acc"].tolist() == [row["test_acc"] for row in alone]
    again = api.sweep(overrides, sweep_dir, echo=False)
    assert again.results["test_acc"].tolist() == loaded.results["test_acc"].tolist()
    with pytest.raises(api.SweepFailed, match="epochs=0: must be >= 1"):
        api.sweep([*small, "epochs=0"], tmp_path / "bad", echo=False)
    with pytest.raises(TypeError, match="list of strings"):
        api.sweep("model=baseline,batchnorm seed=0", tmp_path / "x")
    for odd in (None, [b"model=baseline"], ["seed=0", 1]):
        with pytest.raises(TypeError, match="list of strings"):
            api.sweep(odd, tmp_path / "x")
    with pytest.raises(ValueError, match=r"reads as syntax \(\$ , \{ \}\)"):
        api.sweep(["seed=0"], tmp_path / "a,b_${now:%Y}")
    assert not (tmp_path / "x").exists()
    with pytest.raises(api.SweepFailed, match="Could not find 'hydra/launcher/nope'"):
        api.sweep([*small, "seed=0"], tmp_path / "nope", launcher="nope", echo=False)
