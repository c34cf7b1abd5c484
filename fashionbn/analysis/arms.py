"""Which runs are one arm of the comparison: the keys that group them (`grouping_keys`),
what each model is (`describe_models`: its model.* keys, a plug-in's arguments as
written), one name standing for several networks (`split_networks`) or several names
for one network (`same_networks`), and the keys held fixed only among the runs used."""

import pandas as pd

from fashionbn.jobs.reading import CHOICES


def varying_keys(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if frame[k].nunique(dropna=False) > 1]


def grouping_keys(results: pd.DataFrame, params: list[str]) -> list[str]:
    """'model' plus every parameter but seed that varies across the runs; a sub-key
    of a group choice (model.norm for model) that the choice determines is left
    out of the groups and described per model instead (describe_models)."""
    runs = results.drop_duplicates("run")
    varying = varying_keys(runs, [p for p in params if p not in ("model", "seed")])
    implied = [
        key
        for key in varying
        for choice in CHOICES.values()
        if key.startswith(f"{choice}.")
        and runs.groupby(choice, dropna=False)[key].nunique(dropna=False).max() == 1
    ]
    return ["model", *[k for k in varying if k not in implied]]


# the keys that say what a network is, first in a model's description
DESCRIBED_FIRST = [
    "model._target_",
    "model.hidden",
    "model.norm",
    "model.norm_placement",
    "model.activation",
    "model.init",
]


def model_keys(results: pd.DataFrame) -> list[str]:
    """The model.* parameters (not the name), the ones that describe a network first."""
    keys = [c for c in results.columns if c.startswith("model.")]
    return [*[k for k in DESCRIBED_FIRST if k in keys],
            *sorted(k for k in keys if k not in DESCRIBED_FIRST)]  # fmt: skip


def describe_models(results: pd.DataFrame, group_keys: list[str]) -> dict:
    """model -> {key: value} of every model.* key that is the same in all its runs
    and applies to it (not null), whether or not it differs between models: a
    report always says what each arm is. Keys that vary are group keys."""
    runs = results.drop_duplicates("run")
    described = {}
    for model, part in runs.groupby("model"):
        described[model] = {
            key: _plugin_value(key, part[key].iloc[0])
            for key in model_keys(runs)
            if key not in group_keys
            and part[key].nunique(dropna=False) == 1
            and pd.notna(part[key].iloc[0])
        }
    return described


def _plugin_value(key: str, value):
    """A plug-in's argument as written: a column that other models leave empty
    turns integers into floats (model.norm.num_groups 4 -> 4.0)."""
    integral = isinstance(value, float) and value.is_integer()
    if key.startswith("model.norm.") and integral:
        return int(value)
    return value


def split_networks(results: pd.DataFrame) -> dict[str, list[str]]:
    """model -> the model.* keys whose values vary within its runs, where the models
    do not all have the same set of values (a key swept for every model, such as
    model.hidden=[64],[128], is a group of the comparison; one set by an override for
    some runs of one name, such as model=batchnorm model.norm=layernorm, makes that
    name stand for several networks, and a gap pairs only runs with equal values)."""
    runs = results.drop_duplicates("run")
    split = {}
    for key in model_keys(runs):
        values = {
            model: frozenset(part[key].astype(str))
            for model, part in runs.groupby("model")
        }
        if len(set(values.values())) < 2:
            continue  # the same values for every model: a swept key, or a constant
        for model, seen in values.items():
            others = runs.loc[runs["model"] != model, key]
            # a key no other model has (a plug-in's argument swept for its model,
            # model=groupnorm model.norm.num_groups=4,8) is one arm per value
            if len(seen) > 1 and others.notna().any():
                split.setdefault(model, []).append(key)
    return split


def same_networks(results: pd.DataFrame) -> list[list[str]]:
    """Groups of model names whose runs are the same networks (every model.* key
    equal): their gap measures nothing but a label."""
    runs = results.drop_duplicates("run")
    keys = model_keys(runs)
    networks: dict[frozenset, list[str]] = {}
    for model, part in runs.groupby("model"):
        shapes = frozenset(part[keys].astype(str).apply(tuple, axis=1))
        networks.setdefault(shapes, []).append(model)
    return [sorted(names) for names in networks.values() if len(names) > 1]


def fixed_keys(results: pd.DataFrame, readable: pd.DataFrame, params: list[str]):
    """Parameters constant across the runs used but not across every job read (the
    others diverged or were skipped): key -> (value kept, other values)."""
    runs = results.drop_duplicates("run")
    fixed = {}
    for key in params:
        if key == "seed" or key not in readable or runs[key].nunique(dropna=False) > 1:
            continue
        kept = runs[key].iloc[0]
        others = sorted({str(v) for v in readable[key] if str(v) != str(kept)})
        if others:
            fixed[key] = (kept, others)
    return fixed
