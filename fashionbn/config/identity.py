"""A run's identity: the resolved config minus NON_IDENTITY_KEYS, normalised across
fashionbn versions (`normalise_identity`: retired and renamed keys, defaults for keys
an older version did not record, nulls for keys that cannot matter), and whether a
config read from a job dir is one (`identity_problem`)."""

import dataclasses
import typing
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from fashionbn.config.schema import (
    NON_IDENTITY_KEYS,
    OPTIM_SCHEMAS,
    RENAMED_KEYS,
    RETIRED_KEYS,
    Config,
    DataConfig,
    DiagnosticsConfig,
    ModelConfig,
    OptimConfig,
    not_applicable,
)


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
    for key, default in ABSENT_AT_DEFAULT.items():
        if flat.get(key, default) == default:
            flat.pop(key, None)
    return unflatten(flat)


# keys an identity leaves out while they hold their default: runs of the built-in MLP
# on FashionMNIST keep the identities they had before plug-ins existed (older job
# dirs too)
ABSENT_AT_DEFAULT = {"model._target_": None, "model.args": {}, "data._target_": None,
                     "data.args": {}}  # fmt: skip


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
            if typing.get_origin(hints[f.name]) is dict:  # free-form (model.args)
                if key in flat and not isinstance(flat[key], dict):
                    return f"its config has {key}={flat[key]!r:.60}, not a mapping"
                continue
            if key not in flat:
                if key in ABSENT_AT_DEFAULT:
                    continue
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
