"""Statistics of the tidy results table: summaries across seeds, paired gaps to the
baseline with their intervals, epochs to reach an accuracy. Pure functions of tables."""

import math

import pandas as pd
from scipy import stats

METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds"]
BASELINE = "baseline"


def summarize(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group and epoch: n, mean and std (across seeds) of every metric."""
    grouped = results.groupby([*group_keys, "epoch"], dropna=False)
    summary = grouped[METRICS].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    return summary.reset_index()


def last_epochs(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of each group's own last epoch (groups may have run different
    numbers of epochs)."""
    if not keys:
        return frame[frame["epoch"] == frame["epoch"].max()]
    last = frame.groupby(keys, dropna=False)["epoch"].transform("max")
    return frame[frame["epoch"] == last]


def paired_gaps(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Test-accuracy difference of every other model minus the baseline, paired by seed
    and all other parameters; empty when the sweep lacks a baseline or another model."""
    models = set(results["model"])
    if BASELINE not in models or len(models) < 2:
        return pd.DataFrame()
    pair_keys = [k for k in group_keys if k != "model"] + ["seed", "epoch"]
    wide = results.pivot_table(
        index=pair_keys, columns="model", values="test_acc", dropna=False
    )
    frames = []
    for model in wide.columns:
        if model == BASELINE:
            continue
        gap = (wide[model] - wide[BASELINE]).dropna().rename("gap").reset_index()
        frames.append(gap.assign(comparison=f"{model} − {BASELINE}"))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def t_interval(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (NaN, NaN for fewer than 2)."""
    n, mean = len(values), values.mean()
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def gap_intervals(gaps: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Mean gap with a 95 % t-interval over paired seeds, per comparison and epoch."""
    keys = ["comparison", *[k for k in group_keys if k != "model"], "epoch"]
    rows = []
    for key, part in gaps.groupby(keys, dropna=False):
        low, high = t_interval(part["gap"])
        rows.append({**dict(zip(keys, key)), "n": len(part),
                     "mean": part["gap"].mean(), "ci_low": low,
                     "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


def epochs_to_reach(
    results: pd.DataFrame, group_keys: list[str], threshold: float
) -> pd.DataFrame:
    """Per group: runs, how many reached test_acc >= threshold, mean first epoch."""
    first = results[results["test_acc"] >= threshold].groupby("run")["epoch"].min()
    runs = results.drop_duplicates("run").set_index("run")
    runs["first_epoch"] = first
    rows = []
    for key, part in runs.groupby(group_keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(group_keys, key)), "n": len(part),
                     "reached": int(part["first_epoch"].notna().sum()),
                     "mean_epoch": part["first_epoch"].mean()})  # fmt: skip
    return pd.DataFrame(rows)
