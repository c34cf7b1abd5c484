"""Each model at its own best hyperparameters, chosen on validation metrics only.

When a sweep varies a hyperparameter besides model and seed (the *tuned* keys), every
model gets the setting with the best mean validation metric at its runs' last epoch,
across seeds (or the best median or interquartile mean: `stat`, which a few collapsed
seeds do not decide). The test set never takes part in the choice; it is only
reported at the chosen setting.
"""

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from fashionbn.analysis.stats import iqm, last_epochs, tails

# selection metric -> whether larger is better
SELECT_BY = {"val_acc": True, "val_loss": False}
# the statistic of the metric over seeds that chooses (mean: the original report's)
SELECT_STATS = ("mean", "median", "iqm")
# means closer than this are a tie (accuracies are fractions of a split: float noise)
TIE_TOLERANCE = 1e-12


@dataclass
class Selection:
    tuned: list[str]  # the hyperparameters chosen per model
    by: str  # the validation metric that chose them
    table: pd.DataFrame  # selection.csv: one row per model
    grid: pd.DataFrame  # per model and setting: n, mean/std of `by` and of test_acc
    results: pd.DataFrame  # the results rows of every model at its chosen setting
    chosen: pd.DataFrame  # of those, each run's row at the epoch the choice used
    warnings: list[str] = field(default_factory=list)
    stat: str = "mean"  # the statistic over seeds that chose (SELECT_STATS)
    last: pd.DataFrame = field(default_factory=pd.DataFrame)  # every run's last row

    @property
    def column(self) -> str:
        """The grid's and table's column the choice was made on."""
        return f"{self.by}_{self.stat}"


def tuned_keys(group_keys: list[str]) -> list[str]:
    """The group keys a selection chooses: all but model and the data.* keys."""
    return [k for k in group_keys if k != "model" and not k.startswith("data.")]


def why_no_selection(
    results: pd.DataFrame, group_keys: list[str], by: str
) -> Optional[str]:
    """Why there is no per-model selection (None when there is one, or nothing to
    select: a sweep that varies only model and seed)."""
    tuned = tuned_keys(group_keys)
    if not tuned:
        return None
    if by == "none":
        return "No tuned comparison: selection is off (--select-by none)."
    data_keys = [k for k in group_keys if k.startswith("data.")]
    if data_keys == ["data.drop_last"]:
        return (
            "No tuned comparison across protocols: the runs differ in "
            "data.drop_last; each protocol gets its own selection under 'Does the "
            "answer depend on the protocol?'."
        )
    if data_keys:
        return (
            f"No tuned comparison: the runs differ in {', '.join(data_keys)}; a "
            "selection needs one validation set for all of them."
        )
    last = last_epochs(results, ["run"])
    missing = last[by].isna()
    if missing.any():
        return (
            f"No tuned comparison: the sweep varies {', '.join(tuned)}, but "
            f"{int(missing.sum())} of {len(last)} runs have no validation metrics "
            "(data.val_size=0), and fashionbn never selects on the test set: run the "
            "sweep with data.val_size=N (e.g. experiment=fair_lr)."
        )
    return None


def select(
    results: pd.DataFrame,
    group_keys: list[str],
    by: str,
    diverged: Optional[pd.DataFrame] = None,
    stat: str = "mean",
) -> Selection:
    """Per model, the setting of the tuned keys with the best `stat` (mean, median
    or IQM over seeds) of `by` at the runs' last epoch (ties: the first setting in
    sorted order, with a warning). `diverged`: the parameters of runs that
    diverged, which an edge warning names."""
    tuned = tuned_keys(group_keys)
    last = last_epochs(results, ["run"])
    grouped = last.groupby(["model", *tuned], dropna=False)
    grid = grouped.agg(
        n=("run", "size"),
        **{
            f"{by}_mean": (by, "mean"),
            f"{by}_std": (by, "std"),
            f"{by}_median": (by, "median"),
            f"{by}_iqm": (by, iqm),
            f"{by}_q1": (by, lambda values: values.quantile(0.25)),
            f"{by}_q3": (by, lambda values: values.quantile(0.75)),
            "heavy_tailed": (by, lambda values: tails(values)["heavy_tailed"]),
        },
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", "std"),
    ).reset_index()
    higher_is_better = SELECT_BY[by]
    chosen_rows, warnings = [], []
    for model, part in grid.groupby("model", sort=True):
        order = part.sort_values(
            f"{by}_{stat}", ascending=not higher_is_better, kind="stable"
        )
        chosen = order.iloc[0]
        chosen_rows.append(chosen)
        warnings += _tie_warnings(model, order, tuned, by, stat)
        failed = (
            diverged[diverged["model"] == model]
            if diverged is not None and "model" in diverged
            else None
        )
        warnings += _edge_warnings(model, chosen, part, tuned, failed)
        if chosen["n"] < part["n"].max():
            warnings.append(
                f"{model}'s chosen setting has n={int(chosen['n'])} complete runs, "
                f"other settings up to {int(part['n'].max())}: the others diverged or "
                "are missing, so its mean is over the survivors only"
            )
    table = pd.DataFrame(chosen_rows).reset_index(drop=True)
    chose = [f"{by}_{stat}"] if stat != "mean" else []  # selection.csv's columns
    table = table[["model", *tuned, "n", f"{by}_mean", *chose, "test_acc_mean",
                   "test_acc_std"]]  # fmt: skip
    at_choice = results.merge(table[["model", *tuned]], on=["model", *tuned])
    chosen_epochs = last_epochs(at_choice, ["run"])
    return Selection(tuned, by, table, grid, at_choice, chosen_epochs, warnings, stat,
                     last)  # fmt: skip


def _tie_warnings(
    model: str, order: pd.DataFrame, tuned: list[str], by: str, stat: str = "mean"
) -> list[str]:
    """Say so when the best value is shared: the choice is then only the grid's
    order."""
    best = order[f"{by}_{stat}"].iloc[0]
    tied = order[(order[f"{by}_{stat}"] - best).abs() <= TIE_TOLERANCE]
    if len(tied) < 2:
        return []
    settings = [", ".join(f"{k}={row[k]}" for k in tuned) for _, row in tied.iterrows()]
    return [
        f"{model}: {' and '.join(settings)} tie at {stat} {by} {best:.4f}; the first "
        f"in sorted order ({settings[0]}) was taken, the others would do as well"
    ]


def _edge_warnings(
    model: str,
    chosen: pd.Series,
    part: pd.DataFrame,
    tuned: list[str],
    failed: Optional[pd.DataFrame] = None,
) -> list[str]:
    """'widen the grid' for every numeric tuned value at the edge of what was tried,
    unless values beyond it were tried and diverged (then: that they diverged)."""
    warnings = []
    for key in tuned:
        tried = pd.to_numeric(part[key], errors="coerce").dropna().unique()
        value = pd.to_numeric(pd.Series([chosen[key]]), errors="coerce").iloc[0]
        if len(tried) < 2 or pd.isna(value):
            continue
        if value == tried.max():
            edge, beyond = "largest", lambda other: other > value
        elif value == tried.min():
            edge, beyond = "smallest", lambda other: other < value
        else:
            continue
        lost = []
        if failed is not None and key in failed:
            values = pd.to_numeric(failed[key], errors="coerce").dropna().unique()
            lost = sorted(v for v in values if beyond(v))
        if lost:
            warnings.append(
                f"{model}'s best {key}={chosen[key]} is the {edge} that trained "
                f"without diverging: {key}={', '.join(f'{v:g}' for v in lost)} was "
                "tried and diverged (see Diverged runs)"
            )
        else:
            warnings.append(
                f"{model}'s best {key}={chosen[key]} is the {edge} tried: widen the "
                "grid"
            )
    return warnings
