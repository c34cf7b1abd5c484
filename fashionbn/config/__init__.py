"""What a run is: the configuration schemas, their validation and a run's identity.

`schema` holds the dataclasses Hydra's ConfigStore registers (one per config group) and
the keys that determine a run's numbers; `identity` normalises a stored config into a
run's identity and checks one read from a job dir; `validation` holds the checks Hydra's
types cannot express (positive widths, finite learning rates, a validation split that
fits); `settings` reads a checked config once into the plain values a run uses
(RunSettings), which everything below the two entry points takes.
Imports nothing else from fashionbn: every other stage may import this one.
"""

from fashionbn.config.identity import (  # noqa: F401 - the stage's public names
    flatten,
    identity_problem,
    normalise_identity,
    option_value,
    unflatten,
)
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
    excluded_from_dirname,
    is_plugin,
    not_applicable,
    register_configs,
)
