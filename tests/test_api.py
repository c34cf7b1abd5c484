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
    with pytest.raises(FashionbnError, match="there is no checkpoint.pt"):
        api.load_model(tmp_path)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(real_data_root, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", readme,
        re.S,
    ).group(1)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(real_data_root)  # the example's default data.root
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    sweep = namespace["sweep"]
    assert sweep.summary["n"].tolist() == [2, 2, 2, 2]
    assert sweep.comparisons["comparison"].tolist() == ["batchnorm − baseline"] * 2
    assert not namespace["model"].training
