"""The composed config: defaults, documented overrides, schema errors at start-up."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tests.conftest import CONF_DIR, compose_config


def test_defaults_match_the_original_experiment() -> None:
    cfg = compose_config([])
    assert (cfg.seed, cfg.epochs, cfg.batch_size, cfg.device) == (0, 5, 64, "auto")
    assert cfg.model.name == "baseline" and list(cfg.model.hidden) == [64, 32]
    assert cfg.model.batch_norm is False
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.001, 0.0)
    assert cfg.optim.weight_decay == 0.0
    assert cfg.data.root == "data/"
    assert cfg.data.system_dir == "/usr/share/datasets/fashion-mnist"
    assert (cfg.data.download, cfg.data.train_size, cfg.data.test_size) == (
        False, None, None,
    )  # fmt: skip


def test_batchnorm_group_switches_bn_on_before_relu() -> None:
    cfg = compose_config(["model=batchnorm"])
    assert cfg.model.batch_norm is True
    assert cfg.model.bn_placement.value == "before"


def test_documented_overrides_compose() -> None:
    cfg = compose_config(
        ["optim=adam", "optim.lr=0.01", "epochs=10", "batch_size=128",
         "model.hidden=[128,64,32]"]
    )  # fmt: skip
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.01
    assert list(cfg.optim.betas) == [0.9, 0.999]
    assert (cfg.epochs, cfg.batch_size) == (10, 128)
    assert list(cfg.model.hidden) == [128, 64, 32]


@pytest.mark.parametrize(
    "override",
    [
        "epochs=five",  # wrong type
        "model.hiden=[1]",  # unknown key in a group
        "optim.momentum=fast",  # wrong type in a group
        "model.bn_placement=sideways",  # not one of the enum's values
        "model=foo",  # unknown group option
    ],
)
def test_bad_overrides_fail_at_composition(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


@pytest.mark.parametrize(
    "preset, params",
    [
        ("seed_repro", {"model": "baseline,batchnorm", "seed": "range(0,5)"}),
        ("bn_placement",
         {"model": "baseline,batchnorm,batchnorm_after", "seed": "range(0,3)"}),
        ("lr_sweep", {"model": "baseline,batchnorm", "optim.lr": "0.001,0.01,0.1",
                      "seed": "range(0,3)"}),
        ("fair_lr", {"data.val_size": "10000", "model": "baseline,batchnorm",
                     "optim.lr": "0.001,0.003,0.01,0.03,0.1,0.3",
                     "seed": "range(0,5)"}),
    ],
)  # fmt: skip
def test_experiment_presets_set_the_sweep(preset: str, params: dict) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"experiment={preset}"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.epochs == 5 and cfg.model.name == "baseline"  # defaults untouched


def test_job_dir_names_leave_out_where_and_how_a_job_runs() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            ["experiment=lr_sweep", "model=batchnorm", "optim.lr=0.01", "seed=1",
             "device=cpu", "threads=1", "force=true", "data.root=/x",
             "data.eval_batch_size=100"],
            return_hydra_config=True,
        )  # fmt: skip
    assert cfg.hydra.job.override_dirname == "model=batchnorm,optim.lr=0.01,seed=1"


def test_schemas_are_not_options_of_the_groups() -> None:
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    for group in ("model", "optim", "data"):
        assert group not in repo  # the schemas live in the `schema` group only
    assert sorted(repo["schema"]) == [
        "adam.yaml", "config.yaml", "data.yaml", "model.yaml", "sgd.yaml",
    ]  # fmt: skip
