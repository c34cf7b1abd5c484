"""Bad input: one clear error line before any training (values, devices, a corrupt
dataset file, unknown keys), in-process and from the command line."""

from pathlib import Path

import pytest
import torch

import fashionbn.core.evaluation
import fashionbn.core.train
from fashionbn.config import FashionbnError
from fashionbn.jobs.job import run_job
from tests.conftest import compose_config, run_module


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epochs=0"], "epochs=0: must be >= 1"),
        (["batch_size=0"], "batch_size=0: must be >= 1"),
        (["optim.lr=0"], "optim.lr=0.0: the learning rate must be a finite number"),
        (["optim.lr=-0.1"], "optim.lr=-0.1: the learning rate must be a finite"),
        (["optim.lr=nan"], "optim.lr=nan: the learning rate must be a finite"),
        (["optim.lr=inf"], "optim.lr=inf: the learning rate must be a finite"),
        (["model.hidden=[]"], r"model.hidden=\[\]: give one or more positive"),
        (["model.hidden=[64,0]"], r"model.hidden=\[64, 0\]: give one or more"),
        (
            ["data.train_size=60001"],
            "data.train_size=60001 but the train set has 60000",
        ),
        (["data.test_size=0"], "data.test_size=0: must be >= 1, or null"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0: must be >= 1"),
        (["device=gpu0"], "device=gpu0: use auto, cpu, cuda or cuda:N"),
        (["device=mps"], "device=mps: use auto, cpu, cuda or cuda:N"),
        (["threads=0"], r"threads=0: must be in 1..\d+ \(this machine's cores\)"),
        (["threads=1000"], r"threads=1000: must be in 1..\d+ .* only slows"),
        (["seed=-1"], r"seed=-1: must be in 0..4294967295"),
        (["seed=4294967296"], r"seed=4294967296: must be in 0..4294967295"),
        (["model=batchnorm", "model.norm_eps=0"], "model.norm_eps=0.0: must be > 0"),
        (["model=layernorm", "model.norm_eps=-1"], "model.norm_eps=-1.0: must be >"),
        (["model.init=normal", "model.init_std=0"], "model.init_std=0.0: must be a"),
        (["data.name=mnist"], "data.name=mnist with data.system_dir=/usr/share/"),
        (
            ["diagnostics=on", "diagnostics.every_steps=0"],
            "diagnostics.every_steps=0: must be >= 1, or null",
        ),
        (
            ["diagnostics=on", "diagnostics.probe_size=1"],
            "diagnostics.probe_size=1: must be >= 2",
        ),
        (
            ["diagnostics=on", "diagnostics.step_sizes=[]"],
            r"diagnostics.step_sizes=\[\]: give one or more multiples",
        ),
        (
            ["diagnostics=on", "diagnostics.step_sizes=[1,-2]"],
            r"diagnostics.step_sizes=\[1.0, -2.0\]: give one or more",
        ),
        (
            ["model=batchnorm", "model.bn_momentum=2"],
            r"model.bn_momentum=2.0: must be in \[0, 1\]",
        ),
        (["optim.momentum=-1"], r"optim.momentum=-1.0: must be in \[0, 1\)"),
        (["optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1.0: must be a finite"),
        (["optim=adam", "optim.betas=[2,0]"], r"optim.betas=\[2.0, 0.0\]: give two"),
        (["optim=adam", "optim.betas=[0.9]"], r"optim.betas=\[0.9\]: give two"),
        (["optim=adam", "optim.eps=0"], "optim.eps=0.0: must be a finite number > 0"),
        (["divergence_loss=nan"], "divergence_loss=nan: must be > 0"),
        # a value left missing (OmegaConf's ???), wherever it is: refused by its key
        (["model.activation=???"], r"model.activation=\?\?\?: give it a value"),
        (["model.hidden=[64,???]"], r"model.hidden\[1\]=\?\?\?: give it a value"),
        (["model=groupnorm", "model.norm.eps=???"], r"model.norm.eps=\?\?\?: give"),
        (["model=cnn", "model.args.kernel_size=???"], r"model.args.kernel_size=\?"),
        (["data=digits", "data._target_=???"], r"data._target_=\?\?\?: give it"),
        (["data.system_dir=???"], r"data.system_dir=\?\?\?: give it a value"),
    ],
)
def test_bad_values_fail_before_training(
    overrides, message, real_data_root, tmp_path, monkeypatch
) -> None:
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", must_not_train)
    cfg = compose_config([f"data.root={real_data_root}", *overrides])
    with pytest.raises(FashionbnError, match=message):
        run_job(cfg, tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_before_training(tmp_path) -> None:
    with pytest.raises(FashionbnError, match="device=cuda but CUDA is not available"):
        run_job(compose_config(["device=cuda"]), tmp_path)


def cli_error(args: list[str], cwd: Path) -> str:
    """Run fashionbn.run expecting a clean failure; return its one error line."""
    result = run_module(["fashionbn.run", *args], cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_code_2(real_data_root, tmp_path) -> None:
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    assert "epochs=0: must be >= 1" in cli_error(["epochs=0", run_dir], tmp_path)
    for key in ("threads", "data.root"):  # read before the config is checked
        line = cli_error([f"{key}=???", run_dir], tmp_path)
        assert line.endswith(f"error: {key}=???: give it a value")
    line = cli_error(["data.train_size=100000", f"data.root={real_data_root}", run_dir],
                     tmp_path)  # fmt: skip
    assert "data.train_size=100000 but the train set has 60000" in line
    line = cli_error(["experiment=lr_sweep", run_dir], tmp_path)
    assert (
        "experiment=lr_sweep is a sweep preset (model, optim.lr, seed): run it with "
        "-m, e.g. python -m fashionbn.run -m experiment=lr_sweep"
    ) in line
    assert not (tmp_path / "run" / "status.json").exists()


@pytest.mark.slow
def test_cli_corrupt_dataset_file_is_named(tmp_path, tiny_system_dir) -> None:
    system_dir, _ = tiny_system_dir
    victim = system_dir / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:30])
    line = cli_error(
        [f"data.system_dir={system_dir}", f"data.root={tmp_path / 'root'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )  # fmt: skip
    assert f"{victim}: cannot decompress" in line


@pytest.mark.slow
def test_unknown_options_and_dataset_facts_are_refused_by_hydra(tmp_path) -> None:
    result = run_module(["fashionbn.run", "model=foo"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'model/foo'" in result.stderr
    assert "baseline" in result.stderr and "batchnorm" in result.stderr
    options = result.stderr.split("Available options in 'model':")[1]
    options = options.split("Config search path")[0].split()
    assert options == ["baseline", "batchnorm", "batchnorm_after", "cnn",
                       "cnn_batchnorm", "cnn_groupnorm", "groupnorm", "layernorm",
                       "rmsnorm"]  # fmt: skip
    for key in ("model.in_features=100", "model.num_classes=5"):
        result = run_module(["fashionbn.run", key], cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"Key '{key.split('.')[1].split('=')[0]}' not in 'ModelConfig'" in (
            result.stderr
        )
