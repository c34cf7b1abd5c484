"""What a run is: the configuration schemas, their validation and a run's identity.

`schema` holds the dataclasses Hydra's ConfigStore registers (one per config group) and
what identifies a run (the keys that determine its numbers); `validation` holds the
checks Hydra's types cannot express (positive widths, finite learning rates, a
validation split that fits). Imports nothing else from fashionbn: every other stage
may import this one.
"""

from fashionbn.config.schema import (  # noqa: F401 - the stage's public names
    MEASUREMENT_PREFIXES,
    NON_IDENTITY_KEYS,
    RENAMED_KEYS,
    RETIRED_KEYS,
    Activation,
    AdamConfig,
    Config,
    ConfigError,
    DataConfig,
    DatasetName,
    DiagnosticsConfig,
    FashionbnError,
    Init,
    LoggerConfig,
    ModelConfig,
    Norm,
    NormPlacement,
    OptimConfig,
    SGDConfig,
    dirname_exclude_keys,
    flatten,
    identity_problem,
    is_plugin,
    normalise_identity,
    not_applicable,
    option_value,
    register_configs,
    unflatten,
)
