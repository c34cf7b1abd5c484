"""Pairs of runs: every model against a reference model (`baseline` unless the
aggregate is told otherwise), matched by seed and every other parameter, and the gap
of a metric between them.

A pair is one run of each side, never an average: two runs of one model that claim
the same pair are refused (PairingError). A parameter that one side does not have
(null in every one of its runs: a setting that cannot apply to it, e.g. bn_momentum
without BatchNorm) matches every value of the other side, so one baseline run pairs
with a BatchNorm run at each bn_momentum. The merge is on the pairing keys, so time
and memory grow with the number of runs, never with the product of the keys' values.
"""

import pandas as pd

BASELINE = "baseline"


class PairingError(ValueError):
    """Two runs of one model claim the same pair: refusing to average them."""


def comparison_name(model: str, reference: str) -> str:
    return f"{model} − {reference}"


def pair_rows(
    mine: pd.DataFrame,
    reference: pd.DataFrame,
    keys: list[str],
    metric: str = "test_acc",
    carry: tuple[str, ...] = (),
) -> pd.DataFrame:
    """`mine` and `reference` rows matched on `keys` (see the module docstring), with
    both values of `metric`, the `carry` columns of both sides (the reference's with
    the suffix `_reference`) and gap = mine − reference."""
    mine_keys = [k for k in keys if mine[k].notna().any()]
    reference_keys = [k for k in keys if reference[k].notna().any()]
    for frame, used in ((mine, mine_keys), (reference, reference_keys)):
        refuse_duplicates(frame, used)
    on = [k for k in mine_keys if k in reference_keys]
    columns = [*dict.fromkeys([*carry, metric])]
    merged = mine[[*mine_keys, *columns]].merge(
        reference[[*reference_keys, *columns]], on=on, suffixes=("", "_reference")
    )
    merged["gap"] = merged[metric] - merged[f"{metric}_reference"]
    references = [f"{column}_reference" for column in columns]
    return merged.reindex(columns=[*keys, *columns, *references, "gap"])


def refuse_duplicates(frame: pd.DataFrame, keys: list[str]) -> None:
    """Raise PairingError naming the runs if two rows share every key."""
    clash = frame[frame.duplicated(keys, keep=False)]
    if clash.empty:
        return
    labels = clash[keys].astype(str).apply(tuple, axis=1)  # NaN-safe comparison
    same = clash[labels == labels.iloc[0]]
    first = same.iloc[0]
    where = ", ".join(f"{k}={first[k]}" for k in keys)
    runs = ", ".join(map(str, same["run"])) if "run" in same else f"{len(same)} rows"
    raise PairingError(
        f"model={first['model']} has {len(same)} runs with {where} ({runs}): a pair "
        "is one run of each model, so refusing to average them into one"
    )


def paired_gaps(
    results: pd.DataFrame,
    group_keys: list[str],
    reference: str = BASELINE,
    metric: str = "test_acc",
) -> pd.DataFrame:
    """`metric` of every other model minus the reference's, per epoch, paired by seed
    and every other group key; empty when the runs lack the reference or another
    model."""
    models = sorted(set(results["model"]))
    if reference not in models or len(models) < 2:
        return pd.DataFrame()
    keys = [k for k in group_keys if k != "model"] + ["seed", "epoch"]
    base = results[results["model"] == reference]
    frames = [
        pair_rows(results[results["model"] == model], base, keys, metric).assign(
            comparison=comparison_name(model, reference)
        )
        for model in models
        if model != reference
    ]
    frames = [f[["comparison", *keys, "gap"]] for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def tuned_gaps(
    chosen: pd.DataFrame, reference: str = BASELINE, metric: str = "test_acc"
) -> pd.DataFrame:
    """Each model at its chosen setting minus the reference at its own, paired by seed
    alone, each side at its own epoch (`chosen`: one row per run, the epoch its
    selection looked at): `epoch` is the model's, `epoch_reference` the reference's."""
    models = sorted(set(chosen["model"]))
    if reference not in models:
        return pd.DataFrame()
    base = chosen[chosen["model"] == reference]
    frames = [
        pair_rows(
            chosen[chosen["model"] == model], base, ["seed"], metric, carry=("epoch",)
        ).assign(comparison=comparison_name(model, reference))  # fmt: skip
        for model in models
        if model != reference
    ]
    columns = ["comparison", "seed", "epoch", "epoch_reference", "gap"]
    frames = [f[columns] for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
