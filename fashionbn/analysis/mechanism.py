"""The diagnostics' statistics: what diagnostics.csv measured, summarised across
seeds per group, step, layer and quantity, and the numbers the report's "Why" section
states. Pure functions of tables."""

import math

import pandas as pd


def diagnostics_summary(diagnostics: pd.DataFrame, group_keys: list[str]):
    """Per group, step, layer and quantity: n, mean and std across seeds."""
    keys = [*group_keys, "step", "layer", "quantity"]
    grouped = diagnostics.groupby(keys, dropna=False)["value"]
    table = grouped.agg(n="size", mean="mean", std="std").reset_index()
    epochs = diagnostics.groupby(keys, dropna=False)["epoch"].max().reset_index()
    return table.merge(epochs, on=keys)[[*keys[:-3], "step", "epoch", "layer",
                                         "quantity", "n", "mean", "std"]]  # fmt: skip


def last_hidden_layer(summary: pd.DataFrame) -> str:
    """The highest-numbered hidden layer measured ('all' is the whole model)."""
    return str(max(int(layer) for layer in summary["layer"].unique() if layer != "all"))


def why_numbers(summary: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group: its own last hidden layer's input distribution at the first and last
    measured step, and the run-mean landscape and ICS quantities (means across seeds,
    then over steps); n_min / n_max: the fewest and most seeds behind one point (they
    differ when the runs measured different steps)."""
    rows = []
    for key, part in summary.groupby(group_keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        last = last_hidden_layer(part)  # groups may differ in depth
        first_step, last_step = part["step"].min(), part["step"].max()

        def at(step: int, quantity: str, layer: str = last) -> float:
            hit = part[(part["step"] == step) & (part["layer"] == layer)
                       & (part["quantity"] == quantity)]  # fmt: skip
            return float(hit["mean"].iloc[0]) if len(hit) else math.nan

        def run_mean(quantity: str, layers=None) -> float:
            hit = part[part["quantity"] == quantity]
            if layers is not None:
                hit = hit[hit["layer"].isin(layers)]
            return float(hit["mean"].mean()) if len(hit) else math.nan

        row = {**dict(zip(group_keys, key)), "layer": last, "first_step": first_step,
               "last_step": last_step, "n_min": int(part["n"].min()),
               "n_max": int(part["n"].max())}  # fmt: skip
        for quantity in ("act_in_p15", "act_in_p50", "act_in_p85", "act_in_std"):
            row[f"{quantity}_start"] = at(first_step, quantity)
            row[f"{quantity}_end"] = at(last_step, quantity)
        for quantity in ("beta_smoothness", "grad_change", "loss_range"):
            row[f"{quantity}_mean"] = run_mean(quantity, ["all"])
        row["ics_l2_mean"] = run_mean("ics_l2")
        row["ics_cos_mean"] = run_mean("ics_cos")
        rows.append(row)
    return pd.DataFrame(rows)
