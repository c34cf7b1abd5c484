"""Typed schemas for the Hydra config; the values live in conf/*.yaml.

Each YAML file in a config group starts with a defaults entry naming its schema, so a
misspelt key or a value of the wrong type fails at start-up with Hydra's own message.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    in_features: int = 28 * 28
    num_classes: int = 10


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


def register_configs() -> None:
    """Register the schemas so conf/*.yaml files can name them in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="model", name="schema_model", node=ModelConfig)
    cs.store(group="optim", name="schema_sgd", node=SGDConfig)
    cs.store(group="optim", name="schema_adam", node=AdamConfig)
    cs.store(group="data", name="schema_data", node=DataConfig)
