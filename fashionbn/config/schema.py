"""Typed schemas for the Hydra config, and what each key means for a run.

The values live in conf/*.yaml. Each YAML file of a config group starts with a defaults
entry naming its schema (stored in the `schema` group, so that schemas never show up as
options of `model=`, `optim=`, ...): a misspelt key or a value of the wrong type fails
at start-up with Hydra's own message (fashionbn.config.validation refuses values of the
right type that cannot work). A run's *identity* is what determines its numbers: the
resolved config minus NON_IDENTITY_KEYS, normalised across versions
(normalise_identity).
"""

import dataclasses
import typing
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
    return keys


def is_plugin(norm: Any) -> bool:
    """Whether model.norm names a plug-in (a mapping with a `_target_`), not a
    built-in Norm."""
    return hasattr(norm, "keys") and "_target_" in norm


def dirname_exclude_keys() -> list[str]:
    """Overrides left out of a job dir's name: NON_IDENTITY_KEYS, the logger group
    and the preset name (a preset's own overrides name the dir)."""
    return [*NON_IDENTITY_KEYS, "logger", "experiment"]


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


# --- a run's identity: what determines its numbers ------------------------------


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def option_value(option: Any) -> Any:
    """An enum member from a schema as its plain value; anything else unchanged."""
    return option.value if isinstance(option, Enum) else option


def _schema_defaults(schema) -> dict[str, Any]:
    """The schema's defaults as plain values (required fields left out)."""
    defaults = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if value != MISSING:  # omegaconf's '???': a value each YAML file must give
            defaults[f.name] = option_value(value)
    return defaults


def normalise_identity(config: dict) -> dict:
    """A resolved config (plain dict, from any fashionbn version) -> its identity.

    Drops NON_IDENTITY_KEYS and retired keys, fills keys an older fashionbn did not
    record with their defaults (every new key defaults to the old behaviour, so that is
    what those runs computed), and nulls keys that cannot matter (not_applicable).
    """
    flat = {
        key: option_value(value)
        for key, value in flatten(config).items()
        if key not in NON_IDENTITY_KEYS
    }
    for key, value in RETIRED_KEYS.items():
        if flat.get(key, value) == value:
            flat.pop(key, None)
    for old, new in RENAMED_KEYS.items():
        if old in flat:
            flat.setdefault(new, flat.pop(old))
    if "model.batch_norm" in flat:
        batch_norm = flat.pop("model.batch_norm")
        flat.setdefault("model.norm", "batchnorm" if batch_norm else "none")
    for prefix, schema in _schemas(flat):
        for key, value in _schema_defaults(schema).items():
            full = f"{prefix}{key}"
            given = any(k.startswith(f"{full}.") for k in flat)  # a plug-in's mapping
            if full not in NON_IDENTITY_KEYS and not given:
                flat.setdefault(full, value)
    for key in not_applicable(flat):
        flat[key] = None
    return unflatten(flat)


def unflatten(flat: dict[str, Any]) -> dict:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}, keys sorted for stable files.
    ValueError when a key is both a value and a group ('model' and 'model.norm')."""
    nested: dict = {}
    for key in sorted(flat):
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key} is under a key that holds a value")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"{key} holds a value and a group")
        node[leaf] = flat[key]
    return nested


def _schemas(flat: dict[str, Any]) -> list[tuple[str, type]]:
    """(key prefix, schema) of every group of a flat config (optim's by its name)."""
    name = flat.get("optim.name")
    optim = OPTIM_SCHEMAS.get(name, OptimConfig) if isinstance(name, str) else None
    return [("", Config), ("model.", ModelConfig), ("optim.", optim or OptimConfig),
            ("data.", DataConfig), ("diagnostics.", DiagnosticsConfig)]  # fmt: skip


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a plain value read from a file fits a schema field's annotation."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        return isinstance(value, str)
    return True  # a field type this check does not know: nothing to refuse


def identity_problem(config: Any) -> Optional[str]:
    """Why `config` (read from a job dir's status.json, checkpoint or .hydra files,
    which may hold anything) is not a run's identity fashionbn can use — not a
    mapping, a key of the wrong type (`epochs: "3"`), a required key missing — or
    None. Values are not checked against what a run can train with (an old or a
    future fashionbn may have other options), only their types."""
    if not isinstance(config, dict) or not config:
        return "it holds no config"
    try:
        identity = normalise_identity(config)
    except (TypeError, ValueError, AttributeError, RecursionError) as err:
        return f"its config is damaged ({type(err).__name__})"
    flat = flatten(identity)
    for prefix, schema in _schemas(flat):
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            key = f"{prefix}{f.name}"
            if prefix == "" and f.name in GROUPS:
                if key in flat:
                    return f"its config has {key}={flat[key]!r}, not a group"
                continue
            if key in NON_IDENTITY_KEYS or hints[f.name] is Any:
                continue
            if key not in flat:
                return f"its config lacks {key}"
            value = flat[key]
            if value is None and key in not_applicable(flat):
                continue
            if not _fits(value, hints[f.name]):
                expected = _type_name(hints[f.name])
                return f"its config has {key}={value!r:.60}, not {expected}"
            if isinstance(value, float) and value != value:  # NaN: no run has it
                return f"its config has {key}=nan"
    return None


# the top-level fields of Config that hold a config group, not a value
GROUPS = ("model", "optim", "data", "diagnostics", "logger")


def _type_name(annotation: Any) -> str:
    """'an integer', 'a list of numbers', ... for a schema field's annotation."""
    if typing.get_origin(annotation) is typing.Union:
        names = [_type_name(a) for a in typing.get_args(annotation)]
        return " or ".join(names)
    if typing.get_origin(annotation) is list:
        item = _type_name(typing.get_args(annotation)[0]).split(" ", 1)[1]
        return f"a list of {item}s"
    names = {int: "an integer", float: "a number", bool: "a boolean",
             type(None): "null"}  # fmt: skip
    return names.get(annotation, "a string")
