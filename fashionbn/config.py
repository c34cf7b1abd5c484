"""Typed schemas for the Hydra config, what each key means for a run, and value checks.

The values live in conf/*.yaml. Each YAML file of a config group starts with a defaults
entry naming its schema (stored in the `schema` group, so that schemas never show up as
options of `model=`, `optim=`, ...): a misspelt key or a value of the wrong type fails
at start-up with Hydra's own message. `check_config` refuses values of the right type
that cannot work, before anything is trained or written.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class FashionbnError(Exception):
    """A problem with the user's input (config, data, job dir): one clear line."""


class ConfigError(FashionbnError, ValueError):
    """A config value that cannot work, found before any training starts."""


class BNPlacement(str, Enum):
    """Where BatchNorm1d sits relative to the activation of a hidden layer."""

    before = "before"  # Linear -> BN -> ReLU (the original experiment)
    after = "after"  # Linear -> ReLU -> BN


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    batch_norm: bool = False
    bn_placement: BNPlacement = BNPlacement.before
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5


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
    root: str = "data/"
    system_dir: Optional[str] = "/usr/share/datasets/fashion-mnist"
    download: bool = False
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_size: int = 0
    split_seed: int = 0
    eval_batch_size: int = 10_000


@dataclass
class Config:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    data: DataConfig = MISSING
    seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    device: str = "auto"
    threads: Optional[int] = None
    force: bool = False
    divergence_loss: float = 100.0


OPTIM_SCHEMAS = {"sgd": SGDConfig, "adam": AdamConfig}

# Keys that say where or how a job runs, not what it computes: they are left out of a
# run's identity (status.json, checkpoint.pt, duplicate detection, the aggregate's
# parameters) and out of the job dir's name. The numbers can differ in their last
# digits with `device` and `threads` (float reductions split differently); status.json
# records what a run actually used.
NON_IDENTITY_KEYS = (
    "force",
    "threads",
    "device",
    "data.root",
    "data.system_dir",
    "data.download",
    "data.eval_batch_size",
)
# what older fashionbn versions recorded as config although they are facts of the
# dataset, with the only values they could take
RETIRED_KEYS = {"model.in_features": 28 * 28, "model.num_classes": 10}


def dirname_exclude_keys() -> list[str]:
    """Overrides left out of a job dir's name: NON_IDENTITY_KEYS and the preset name
    (a preset's own overrides name the dir; `experiment=...` itself says nothing)."""
    return [*NON_IDENTITY_KEYS, "experiment"]


def register_configs() -> None:
    """Register the schemas (and the job-dir naming resolver) with Hydra."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="config", node=Config)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="sgd", node=SGDConfig)
    cs.store(group="schema", name="adam", node=AdamConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    if not OmegaConf.has_resolver("fashionbn_dirname_exclude"):
        OmegaConf.register_new_resolver(
            "fashionbn_dirname_exclude", dirname_exclude_keys
        )


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
            defaults[f.name] = value.value if isinstance(value, Enum) else value
    return defaults


def normalise_identity(config: dict) -> dict:
    """A resolved config (plain dict, from any fashionbn version) -> its identity.

    Drops NON_IDENTITY_KEYS and retired keys, and fills keys an older fashionbn did not
    record with their defaults: every new key defaults to the old behaviour, so that is
    what those runs computed.
    """
    flat = {
        key: value.value if isinstance(value, Enum) else value
        for key, value in flatten(config).items()
        if key not in NON_IDENTITY_KEYS
    }
    for key, value in RETIRED_KEYS.items():
        if flat.get(key, value) == value:
            flat.pop(key, None)
    optim_schema = OPTIM_SCHEMAS.get(flat.get("optim.name"), OptimConfig)
    for prefix, schema in (
        ("", Config),
        ("model.", ModelConfig),
        ("optim.", optim_schema),
        ("data.", DataConfig),
    ):
        for key, value in _schema_defaults(schema).items():
            if f"{prefix}{key}" not in NON_IDENTITY_KEYS:
                flat.setdefault(f"{prefix}{key}", value)
    return unflatten(flat)


def unflatten(flat: dict[str, Any]) -> dict:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}, keys sorted for stable files."""
    nested: dict = {}
    for key in sorted(flat):
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = flat[key]
    return nested


# --- values of the right type that cannot work ----------------------------------


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_config(cfg) -> None:
    """Raise ConfigError (one line naming the key) for any value that cannot work."""
    problems = [*_run_problems(cfg), *_model_problems(cfg.model)]
    problems += [*_optim_problems(cfg.optim), *_data_problems(cfg.data)]
    if problems:
        raise ConfigError(problems[0])


def _run_problems(cfg) -> list[str]:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs={cfg.epochs}: must be >= 1")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size}: must be >= 1")
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"seed={cfg.seed}: must be in 0..{2**32 - 1}")
    cores = available_cores()
    if cfg.threads is not None and not 1 <= cfg.threads <= cores:
        problems.append(
            f"threads={cfg.threads}: must be in 1..{cores} (this machine's cores) or "
            "null; more threads than cores only slows training down"
        )
    if not cfg.divergence_loss > 0:
        problems.append(f"divergence_loss={cfg.divergence_loss}: must be > 0")
    return problems


def _model_problems(model) -> list[str]:
    problems = []
    hidden = list(model.hidden)
    if not hidden or any(width <= 0 for width in hidden):
        problems.append(
            f"model.hidden={hidden}: give one or more positive layer widths, "
            "e.g. model.hidden=[64,32]"
        )
    if not (_finite(model.bn_eps) and model.bn_eps > 0):
        problems.append(
            f"model.bn_eps={model.bn_eps}: must be > 0 (it keeps BatchNorm from "
            "dividing by zero); torch's default is 1e-05"
        )
    if not (_finite(model.bn_momentum) and 0 <= model.bn_momentum <= 1):
        problems.append(
            f"model.bn_momentum={model.bn_momentum}: must be in [0, 1] (the weight of "
            "each new batch in the running statistics); torch's default is 0.1"
        )
    return problems


def _optim_problems(optim) -> list[str]:
    problems = []
    if not (_finite(optim.lr) and optim.lr > 0):
        problems.append(
            f"optim.lr={optim.lr}: the learning rate must be a finite number > 0"
        )
    if not (_finite(optim.weight_decay) and optim.weight_decay >= 0):
        problems.append(
            f"optim.weight_decay={optim.weight_decay}: must be a finite number >= 0"
        )
    if "momentum" in optim:
        if not (_finite(optim.momentum) and 0 <= optim.momentum < 1):
            problems.append(f"optim.momentum={optim.momentum}: must be in [0, 1)")
        elif optim.nesterov and optim.momentum == 0:
            problems.append("optim.nesterov=true needs optim.momentum > 0")
    if "betas" in optim:
        betas = list(optim.betas)
        if len(betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in betas):
            problems.append(
                f"optim.betas={betas}: give two values in [0, 1), e.g. [0.9,0.999]"
            )
    if "eps" in optim and not (_finite(optim.eps) and optim.eps > 0):
        problems.append(f"optim.eps={optim.eps}: must be a finite number > 0")
    return problems


def _data_problems(data) -> list[str]:
    problems = []
    for key in ("train_size", "test_size"):
        size = data[key]
        if size is not None and size < 1:
            problems.append(
                f"data.{key}={size}: must be >= 1, or null for the whole split"
            )
    if data.val_size < 0:
        problems.append(
            f"data.val_size={data.val_size}: must be >= 0 (0: no validation split)"
        )
    if not 0 <= data.split_seed < 2**63:
        problems.append(f"data.split_seed={data.split_seed}: must be in 0..2**63-1")
    if data.eval_batch_size < 1:
        problems.append(f"data.eval_batch_size={data.eval_batch_size}: must be >= 1")
    return problems
