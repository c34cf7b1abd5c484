"""The composed config: defaults, documented overrides, schema errors at start-up."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from fashionbn.config import ConfigError, normalise_identity
from fashionbn.config.settings import run_identity, run_settings
from fashionbn.config.validation import check_config, missing_problem
from tests.conftest import CONF_DIR, compose_config


def test_defaults_match_the_original_experiment() -> None:
    cfg = compose_config([])
    assert (cfg.seed, cfg.epochs, cfg.batch_size, cfg.device) == (0, 5, 64, "auto")
    assert cfg.model.name == "baseline" and list(cfg.model.hidden) == [64, 32]
    assert cfg.model.norm == "none"
    assert cfg.model.activation.value == "relu" and cfg.model.init.value == "default"
    assert cfg.diagnostics.enabled is False
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.001, 0.0)
    assert cfg.optim.weight_decay == 0.0
    assert cfg.data.root == "data/"
    assert cfg.data.system_dir == "/usr/share/datasets/fashion-mnist"
    assert (cfg.data.download, cfg.data.train_size, cfg.data.test_size) == (
        False, None, None,
    )  # fmt: skip


def test_batchnorm_group_switches_bn_on_before_relu() -> None:
    cfg = compose_config(["model=batchnorm"])
    assert cfg.model.norm == "batchnorm"
    assert cfg.model.norm_placement.value == "before"


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
        "model.norm_placement=sideways",  # not one of the enum's values
        "model.activation=swish",
        "model.batch_norm=true",  # renamed: model.norm=batchnorm
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
        ("ioffe_fig1", {"model": "baseline,batchnorm", "seed": "range(0,3)"}),
        ("fair_lr", {"data.val_size": "10000", "model": "baseline,batchnorm",
                     "optim.lr": "0.001,0.003,0.01,0.03,0.1,0.3",
                     "seed": "range(0,5)"}),
        ("robust", {"data.val_size": "10000", "data.drop_last": "false,true",
                    "model": "baseline,batchnorm",
                    "optim.lr": "0.001,0.003,0.01,0.03,0.1,0.3,1,3",
                    "seed": "range(0,10)"}),
    ],
)  # fmt: skip
def test_experiment_presets_set_the_sweep(preset: str, params: dict) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"experiment={preset}"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.model.name == "baseline"
    if preset == "robust":  # 20 epochs: budgets 5 and 20 from the same runs
        assert (cfg.epochs, cfg.precise_bn, cfg.batch_size) == (20, True, 64)
    elif preset != "ioffe_fig1":
        assert cfg.epochs == 5 and cfg.batch_size == 64  # defaults untouched


def test_the_papers_experiment_as_a_preset() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["experiment=ioffe_fig1", "model=batchnorm"])
    assert list(cfg.model.hidden) == [100, 100, 100]
    assert cfg.model.activation.value == "sigmoid" and cfg.model.norm == "batchnorm"
    assert (cfg.model.init.value, cfg.model.init_std) == ("normal", 0.01)
    assert (cfg.batch_size, cfg.epochs, cfg.optim.name) == (60, 50, "sgd")
    assert cfg.diagnostics.enabled is True and cfg.diagnostics.every_steps is None
    # 60,000 / 60 = 1,000 steps per epoch: the paper's 50,000 steps


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
        "adam.yaml", "config.yaml", "data.yaml", "diagnostics.yaml", "logger.yaml",
        "model.yaml", "sgd.yaml",
    ]  # fmt: skip


def test_identities_of_older_versions_use_todays_keys() -> None:
    """model.batch_norm/bn_placement/bn_eps became model.norm/norm_placement/norm_eps;
    keys an older run did not record take the defaults that reproduce it."""
    old = {
        "model": {"name": "batchnorm_after", "hidden": [64, 32], "batch_norm": True,
                  "bn_placement": "after", "bn_momentum": 0.1, "bn_eps": 1e-5,
                  "in_features": 784, "num_classes": 10},
        "optim": {"name": "sgd", "lr": 0.01},
        "data": {"root": "/x", "train_size": None},
        "seed": 1, "epochs": 5, "device": "auto",
    }  # fmt: skip
    identity = normalise_identity(old)
    assert identity["model"] == {
        "activation": "relu", "bn_momentum": 0.1, "hidden": [64, 32],
        "init": "default", "init_std": None, "name": "batchnorm_after",
        "norm": "batchnorm", "norm_eps": 1e-5, "norm_placement": "after",
    }  # fmt: skip
    assert identity["optim"] == {"lr": 0.01, "momentum": 0.0, "name": "sgd",
                                 "nesterov": False, "weight_decay": 0.0}  # fmt: skip
    assert identity["data"]["val_size"] == 0 and "root" not in identity["data"]
    assert identity["diagnostics"]["enabled"] is False
    assert "device" not in identity
    today = run_identity(compose_config(["model=batchnorm_after", "optim.lr=0.01",
                                         "seed=1"]))  # fmt: skip
    assert {k: v for k, v in today.items() if k != "data"} == {
        k: v for k, v in identity.items() if k != "data"
    }
    assert normalise_identity({"model": {"batch_norm": False}})["model"]["norm"] == (
        "none"
    )


def test_loggers_are_not_part_of_a_runs_identity() -> None:
    plain = run_identity(compose_config(["model=batchnorm"]))
    logged = run_identity(
        compose_config(["model=batchnorm", "logger=all", "logger.tracking_uri=x"])
    )
    assert plain == logged and "logger" not in plain
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["logger=all", "logger.experiment=e", "seed=2"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.job.override_dirname == "seed=2"


# --- issue 15: keys that cannot change a run are not part of what it is -------------


@pytest.mark.parametrize(
    "model, irrelevant",
    [
        ("baseline", ["model.bn_momentum=0.5", "model.norm_eps=0.1",
                      "model.norm_placement=after"]),
        ("layernorm", ["model.bn_momentum=0.5"]),
        ("batchnorm", ["model.init_std=0.5"]),  # the default init draws no N(0, std)
        ("batchnorm", ["data.split_seed=7"]),  # no validation split to draw
    ],
)  # fmt: skip
def test_keys_that_cannot_matter_give_the_same_identity(model, irrelevant) -> None:
    plain = run_identity(compose_config([f"model={model}"]))
    assert run_identity(compose_config([f"model={model}", *irrelevant])) == plain


@pytest.mark.parametrize(
    "overrides",
    [["model=batchnorm", "model.bn_momentum=0.5"],
     ["model=layernorm", "model.norm_eps=0.1"],
     ["model=batchnorm", "model.norm_placement=after"],
     ["model.init=normal", "model.init_std=0.5"],
     ["data.val_size=100", "data.split_seed=7"]],
)  # fmt: skip
def test_keys_that_matter_still_give_another_identity(overrides) -> None:
    base = [o for o in overrides if o.split("=")[0] in ("model", "model.init",
                                                         "data.val_size")]  # fmt: skip
    assert run_identity(compose_config(overrides)) != run_identity(compose_config(base))


def test_keys_that_cannot_matter_are_not_refused() -> None:
    irrelevant = ["model.bn_momentum=2", "model.norm_eps=0", "model.init_std=0",
                  "data.split_seed=-1"]  # fmt: skip
    check_config(compose_config(irrelevant))
    for overrides, key in (
        (["model=batchnorm", "model.bn_momentum=2"], "model.bn_momentum=2.0"),
        (["model=layernorm", "model.norm_eps=0"], "model.norm_eps=0.0"),
        (["model.init=normal", "model.init_std=0"], "model.init_std=0.0"),
        (["data.val_size=10", "data.split_seed=-1"], "data.split_seed=-1"),
    ):
        with pytest.raises(ConfigError, match=key):
            check_config(compose_config(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+model.args.width={a:1}"], "model.args={'width': {'a': 1}}: arguments "
         "of a model._target_, but the model is the built-in MLP"),
        (["model.norm={_target_:''}"], "model.norm._target_='': give a class"),
        (["model.norm={x:1}"], "model.norm={'x': 1}: not a built-in normalisation"),
        (["data=mnist", "+data.args.n=[1,2]"], "data.args={'n': [1, 2]}: arguments "
         "of a data._target_"),
        (["epochs=???"], "epochs=???: give it a value"),  # OmegaConf's missing value
        (["model=batchnorm", "model.bn_momentum=???"], "model.bn_momentum=???: give"),
        (["data.train_size=???"], "data.train_size=???: give it a value"),
    ],
)  # fmt: skip
def test_a_refused_value_is_written_as_a_plain_value(overrides, message) -> None:
    """check_config reads the resolved values: a mapping or list in a message reads
    as Python writes it, whole and nested; a missing value is refused by its key."""
    with pytest.raises(ConfigError) as refused:
        check_config(compose_config(overrides))
    assert str(refused.value).startswith(message)


def test_the_first_value_left_missing_is_named() -> None:
    assert missing_problem({"a": 1, "b": [1, {"c": None}], "d": "x"}) is None
    assert missing_problem({"a": {"b": {"c": "???"}}}) == "a.b.c=???: give it a value"
    assert missing_problem({"a": [0, [1, "???"]]}) == "a[1][1]=???: give it a value"
    assert (
        missing_problem({"a": [{"b": "???"}], "c": "???"})
        == "a[0].b=???: give it a value"
    )
    assert missing_problem({"a": "?? ?", "b": "???x"}) is None  # only '???' itself


def test_run_settings_are_the_configs_values_read_once() -> None:
    """run_settings: plain values with the schema's defaults applied, the identity,
    and read-only plug-in specs; a value that cannot work is one ConfigError."""
    cfg = compose_config(["model=batchnorm", "optim.lr=0.05", "seed=7", "epochs=3",
                          "batch_size=32", "data.drop_last=true", "precise_bn=true",
                          "data.eval_batch_size=500", "threads=1",
                          "diagnostics=on", "diagnostics.every_steps=9"])  # fmt: skip
    run = run_settings(cfg)
    assert (run.seed, run.epochs, run.batch_size, run.threads) == (7, 3, 32, 1)
    assert (run.drop_last, run.precise_bn, run.eval_batch_size) == (True, True, 500)
    assert (run.divergence_loss, run.device, run.force, run.extend) == (
        100.0, "auto", False, False,
    )  # fmt: skip
    assert (run.optim.name, run.optim.lr, run.optim.momentum) == ("sgd", 0.05, 0.0)
    assert run.diagnostics.every_steps == 9 and run.diagnostics.enabled
    assert run.diagnostics.step_sizes == (0.5, 1.0, 2.0, 4.0)
    assert run.identity == run_identity(cfg)
    assert run.identity["optim"]["lr"] == 0.05
    assert run.model.norm == "batchnorm" and run.model.hidden == [64, 32]
    with pytest.raises(Exception):  # the specs handed on cannot be changed
        run.model.hidden = [8]
    with pytest.raises(Exception):  # nor the settings themselves
        run.seed = 8
    defaults = run_settings(compose_config([]))
    assert (defaults.drop_last, defaults.precise_bn, defaults.threads) == (
        False, False, None,
    )  # fmt: skip
    assert defaults.diagnostics.every_steps is None and not defaults.diagnostics.enabled
    with pytest.raises(ConfigError, match="epochs=0"):
        run_settings(compose_config(["epochs=0"]))


def test_run_settings_are_a_copy_of_the_config() -> None:
    """The settings are read when they are made: changing the config afterwards
    changes no run's settings (nor its specs)."""
    cfg = compose_config([])
    run = run_settings(cfg)
    cfg.model.hidden = [8]
    cfg.data.drop_last = True
    assert run.model.hidden == [64, 32] and run.drop_last is False
