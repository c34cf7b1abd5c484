"""Typed schemas for the Hydra config, and what each key means for a run.

The values live in conf/*.yaml. Each YAML file of a config group starts with a defaults
entry naming its schema (stored in the `schema` group, so that schemas never show up as
options of `model=`, `optim=`, ...): a misspelt key or a value of the wrong type fails
at start-up with Hydra's own message (fashionbn.config.validation refuses values of the
right type that cannot work). A run's *identity* is what determines its numbers: the
resolved config minus NON_IDENTITY_KEYS, normalised across versions
(fashionbn.config.identity).
"""

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class FashionbnError(Exception):
    """A problem with the user's input (config, data, job dir): one clear line."""


class ConfigError(FashionbnError, ValueError):
    """A config value that cannot work, found before any training starts."""


class Norm(str, Enum):
    """The built-in normalisations of every hidden layer (model.norm also takes a
    plug-in: a mapping with a `_target_`, see is_plugin)."""

    none = "none"
    batchnorm = "batchnorm"  # BatchNorm1d: per unit, over the batch
    layernorm = "layernorm"  # LayerNorm: per sample, over the layer's units


class NormPlacement(str, Enum):
    """Where the normalisation sits relative to the activation of a hidden layer."""

    before = "before"  # Linear -> norm -> activation (the original experiment)
    after = "after"  # Linear -> activation -> norm


class Activation(str, Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"


class Init(str, Enum):
    default = "default"  # PyTorch's Linear init (Kaiming-uniform weights and biases)
    normal = "normal"  # weights ~ N(0, init_std^2), biases 0


@dataclass
class ModelConfig:
    name: str = MISSING
    # null: the built-in MLP; or a model factory, called with the data's input shape
    # and classes, hidden, the norm, norm_placement, activation and **args
    # (core/model.py build_model; conf/model/cnn.yaml)
    _target_: Optional[str] = None
    args: dict[str, Any] = field(default_factory=dict)
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    # a built-in Norm's name, or a plug-in: {_target_: <a module class or factory>,
    # its arguments...}, called with each hidden layer's width (core/model.py)
    norm: Any = Norm.none.value
    norm_placement: NormPlacement = NormPlacement.before
    bn_momentum: float = 0.1
    norm_eps: float = 1e-5
    activation: Activation = Activation.relu
    init: Init = Init.default
    init_std: float = 0.01


class DatasetName(str, Enum):
    fashion_mnist = "fashion_mnist"
    mnist = "mnist"


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class DataConfig:
    # null: FashionMNIST/MNIST's files (name, root, system_dir); or a data plug-in: a
    # function called with **args returning the train and test tensors (core/sources.py)
    _target_: Optional[str] = None
    args: dict[str, Any] = field(default_factory=dict)
    name: DatasetName = DatasetName.fashion_mnist
    root: str = "data/"
    system_dir: Optional[str] = "/usr/share/datasets/fashion-mnist"
    download: bool = False
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_size: int = 0
    split_seed: int = 0
    drop_last: bool = False
    eval_batch_size: int = 10_000


@dataclass
class DiagnosticsConfig:
    enabled: bool = False
    every_steps: Optional[int] = None  # null: a 50th of the run's steps
    probe_size: int = 128
    step_sizes: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    ics: bool = True


@dataclass
class LoggerConfig:
    tensorboard: bool = False
    mlflow: bool = False
    tracking_uri: Optional[str] = None  # null: sqlite:///<sweep dir>/mlflow.db
    experiment: Optional[str] = None  # null: the sweep dir's path


@dataclass
class Config:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    data: DataConfig = MISSING
    diagnostics: DiagnosticsConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    device: str = "auto"
    threads: Optional[int] = None
    force: bool = False
    extend: bool = False
    divergence_loss: float = 100.0
    precise_bn: bool = False


OPTIM_SCHEMAS = {"sgd": SGDConfig, "adam": AdamConfig}

# Keys that say where or how a job runs, not what it computes: they are left out of a
# run's identity (status.json, checkpoint.pt, duplicate detection, the aggregate's
# parameters) and out of the job dir's name. The numbers can differ in their last
# digits with `device` and `threads` (float reductions split differently); status.json
# records what a run actually used.
NON_IDENTITY_KEYS = (
    "force",
    "extend",
    "threads",
    "device",
    "data.root",
    "data.system_dir",
    "data.download",
    "data.eval_batch_size",
    *[f"logger.{f.name}" for f in dataclasses.fields(LoggerConfig)],
)
# what older fashionbn versions recorded as config although they are facts of the
# dataset, with the only values they could take
RETIRED_KEYS = {"model.in_features": 28 * 28, "model.num_classes": 10}
# keys older versions called otherwise (model.batch_norm: true/false became model.norm)
RENAMED_KEYS = {
    "model.bn_placement": "model.norm_placement",
    "model.bn_eps": "model.norm_eps",
}
# keys that decide what a run records besides its metrics, never its numbers (tests
# prove diagnostics and precise BatchNorm statistics change no metric): part of a job's
# identity, but not parameters of the experiment when the aggregate groups and counts
# runs
MEASUREMENT_PREFIXES = ("diagnostics.", "precise_bn")


def not_applicable(flat: dict[str, Any]) -> list[str]:
    """Keys of a flat config that cannot change what the run computes or records: a
    BatchNorm setting without BatchNorm (its momentum, its precise statistics), a
    normalisation setting without normalisation, the std of an init that is not used,
    the validation split's seed without a split. They are not validated, and a run's
    identity holds null for them, so the same computation has one identity whatever
    they were set to."""
    plugin = any(key.startswith("model.norm.") for key in flat)
    norm = "plug-in" if plugin else flat.get("model.norm", Norm.none.value)
    keys = []
    if plugin:
        # a plug-in: its own arguments say its eps and momentum; it may hold a
        # BatchNorm, whose precise statistics precise_bn measures
        keys += ["model.bn_momentum", "model.norm_eps"]
    elif norm != Norm.batchnorm.value:
        keys += ["model.bn_momentum", "precise_bn"]
    if norm == Norm.none.value:
        keys += ["model.norm_eps", "model.norm_placement"]
    if flat.get("model.init", Init.default.value) != Init.normal.value:
        keys.append("model.init_std")
    if not flat.get("data.val_size"):
        keys.append("data.split_seed")
    if flat.get("data._target_"):  # a data plug-in: its target and args say which
        keys.append("data.name")
    return keys


def is_plugin(norm: Any) -> bool:
    """Whether model.norm names a plug-in (a mapping with a `_target_`), not a
    built-in Norm."""
    return hasattr(norm, "keys") and "_target_" in norm


def dirname_exclude_keys() -> list[str]:
    """Overrides left out of a job dir's name: NON_IDENTITY_KEYS, the logger group
    and the preset name (a preset's own overrides name the dir)."""
    return [*NON_IDENTITY_KEYS, "logger", "experiment"]


# conf/config.yaml's hydra.job.config.override_dirname.exclude_keys
DIRNAME_EXCLUDE = "${fashionbn_dirname_exclude:}"


def excluded_from_dirname(naming: Any) -> list[str]:
    """list(naming.exclude_keys) of a hydra.job.config.override_dirname node.
    Where it is conf/config.yaml's own interpolation, that is our resolver's
    value (a constant): taken from it, not resolved again for every job of a
    sweep (parsing the interpolation and wrapping the list cost ~0.5 ms)."""
    if naming._get_node("exclude_keys")._value() == DIRNAME_EXCLUDE:
        return dirname_exclude_keys()
    return list(naming.exclude_keys)


# conf/config.yaml's hydra.sweep.subdir
JOB_SUBDIR = "${fashionbn_job_dirname:${hydra.job.override_dirname}}"


def job_subdir(config: Any) -> str:
    """str(OmegaConf.select(config, "hydra.sweep.subdir")) of a job's config. Where
    it is conf/config.yaml's own interpolation, job_dirname of the job's
    override_dirname (what the resolver returns), without parsing the
    interpolation again for every job of a sweep."""
    sweep = config.hydra.sweep
    if sweep._get_node("subdir")._value() == JOB_SUBDIR:
        return job_dirname(OmegaConf.select(config, "hydra.job.override_dirname"))
    return str(OmegaConf.select(config, "hydra.sweep.subdir"))


def register_configs() -> None:
    """Register the schemas (and the job-dir naming resolver) with Hydra."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="config", node=Config)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="sgd", node=SGDConfig)
    cs.store(group="schema", name="adam", node=AdamConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    cs.store(group="schema", name="diagnostics", node=DiagnosticsConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)
    if not OmegaConf.has_resolver("fashionbn_dirname_exclude"):
        OmegaConf.register_new_resolver(
            "fashionbn_dirname_exclude", dirname_exclude_keys
        )
    if not OmegaConf.has_resolver("fashionbn_job_dirname"):
        OmegaConf.register_new_resolver("fashionbn_job_dirname", job_dirname)


def job_dirname(override_dirname: str) -> str:
    """A job dir's name from its overrides, one path component whatever a value
    holds: a '/' in a value ('model.name=../../x') would put the dir elsewhere, so
    it is written %2F (the only change: overrides without '/' name dirs as
    before)."""
    return str(override_dirname).replace("/", "%2F")
