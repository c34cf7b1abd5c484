"""Does the answer depend on the protocol? The tuned comparison (each model at its own
best setting, chosen on validation data) repeated in every protocol cell: the last
incomplete batch kept or dropped (data.drop_last) x BatchNorm's evaluation statistics
(running or precise) x budget (epochs). Cells are separate comparisons of the same
question, so their p-values are corrected together (Holm), and the verdict says
whether the sign of the gap is the same in every cell — or which choice flips it.
"""

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from fashionbn.analysis.arms import grouping_keys
from fashionbn.analysis.markdown import plural
from fashionbn.analysis.pairing import paired_gaps, tuned_gaps
from fashionbn.analysis.protocol import (
    at_budget,
    collapses,
    evaluated,
    precise_available,
    statistics_word,
)
from fashionbn.analysis.selection import select, tuned_keys, why_no_selection
from fashionbn.analysis.stats import compare, holm, tuned_comparisons
from fashionbn.analysis.table import Sweep

PROTOCOL_KEYS = ["data.drop_last"]  # data.* keys that change the protocol, not the data
MIN_PAIRS = 2  # seed pairs a cell needs before the verdict counts its sign
FACTORS = {"data.drop_last": "the last incomplete batch (data.drop_last)",
           "evaluation": "BatchNorm's evaluation statistics",
           "budget": "the budget (epochs)"}  # fmt: skip


def restricted(sweep: Sweep, key: str, value) -> Sweep:
    """The sweep's runs with `key` == `value`."""

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty or key not in frame:
            return frame
        return frame[frame[key].astype(str) == str(value)]

    diverged = keep(sweep.diverged_params)
    runs = set(diverged["run"]) if "run" in diverged else set()
    return dataclasses.replace(
        sweep, results=keep(sweep.results), diagnostics=keep(sweep.diagnostics),
        diverged_params=diverged, diverged_results=keep(sweep.diverged_results),
        diverged=[(run, how) for run, how in sweep.diverged if run in runs],
    )  # fmt: skip


def default_budgets(sweep: Sweep) -> list[int]:
    """The notebook's 5 epochs and the runs' full length, where they are longer."""
    longest = int(sweep.results["epoch"].max())
    return sorted({min(5, longest), longest})


def cells(sweep: Sweep, budgets: list[int]) -> list[dict]:
    """Every protocol cell the runs allow: {data.drop_last, evaluation, budget}."""
    values = sorted(sweep.results["data.drop_last"].dropna().unique(), key=str)
    evaluations = ["default", "precise"] if precise_available(sweep) else ["default"]
    return [
        {"data.drop_last": value, "evaluation": evaluation, "budget": budget}
        for value in values
        for budget in budgets
        for evaluation in evaluations
    ]


def robustness(
    sweep: Sweep,
    precision: float,
    reference: str,
    select_by: str,
    budgets: Optional[list[int]] = None,
    notes: Optional[list[str]] = None,
    select_stat: str = "mean",
) -> Optional[pd.DataFrame]:
    """One row per protocol cell and comparison: each arm's chosen setting and test
    accuracy, the tuned gap and its statistics, p corrected over the cells (Holm);
    when the runs vary no hyperparameter, the models as they ran. None when the runs
    allow fewer than two cells, or vary a hyperparameter without validation metrics
    to select it on. A budget
    beyond the runs' length is left out, with a line in `notes`."""
    if "data.drop_last" not in sweep.results:
        return None
    longest = int(sweep.results["epoch"].max())
    asked = budgets or default_budgets(sweep)
    budgets = [b for b in asked if b <= longest]
    if len(budgets) < len(asked) and notes is not None:
        uses = (
            f"the protocol section uses {','.join(map(str, budgets))}"
            if budgets
            else f"there is no protocol section (give budgets up to {longest})"
        )
        notes.append(
            f"--budgets {','.join(map(str, asked))}: the runs last {longest} epochs "
            f"at most, so {uses}"
        )
    every = cells(sweep, budgets)
    if len(every) < 2:
        return None
    rows = []
    for cell in every:
        part = restricted(sweep, "data.drop_last", cell["data.drop_last"])
        if part.results.empty:
            continue
        part = at_budget(part, cell["budget"])
        results = evaluated(part.results, cell["evaluation"])
        keys = grouping_keys(results, part.params)
        counts = {"collapsed": len(collapses(results)),
                  "runs": results["run"].nunique()}  # fmt: skip
        if not tuned_keys(keys):  # nothing to tune: the models as they ran
            rows += untuned(results, keys, reference, precision, {**cell, **counts})
            continue
        why = why_no_selection(results, keys, select_by)
        if why:
            if notes is not None:
                notes.append(
                    f"protocol cell {describe_cell(cell)} left out: {why.rstrip('.')}"
                )
            continue
        selection = select(results, keys, select_by, part.diverged_params,
                           select_stat)  # fmt: skip
        gaps = tuned_gaps(selection.chosen, reference)
        table = tuned_comparisons(gaps, precision, "")
        for _, row in table.iterrows():
            model = row["comparison"].split(" − ")[0]
            rows.append({**cell, **row.to_dict(), **counts,
                         **arm("model", selection, model),
                         **arm("reference", selection, reference),
                         "warnings": "; ".join(selection.warnings)})  # fmt: skip
    if len(rows) < 2:
        return None
    frame = pd.DataFrame(rows)
    return frame.assign(p_holm=holm(frame["p_value"].tolist()))


def untuned(
    results: pd.DataFrame, keys: list[str], reference: str, precision: float,
    cell: dict,
) -> list[dict]:  # fmt: skip
    """A cell's rows when the runs vary no hyperparameter: each model as it ran,
    paired by seed with the reference, at the cell's budget."""
    gaps = paired_gaps(results, keys, reference)
    if gaps.empty:
        return []
    last = results[results["epoch"] == cell["budget"]]
    rows = []
    for comparison, part in gaps[gaps["epoch"] == cell["budget"]].groupby("comparison"):
        model = comparison.split(" − ")[0]
        sides = {"model": last[last["model"] == model],
                 "reference": last[last["model"] == reference]}  # fmt: skip
        statistics = compare(part["gap"], precision)
        rows.append({**cell, "comparison": comparison, "epoch": cell["budget"],
                     "epoch_reference": cell["budget"], **statistics,
                     "warnings": ""})  # fmt: skip
        for prefix, side in sides.items():
            rows[-1] |= {f"{prefix}_setting": "as run",
                         f"{prefix}_val": side["val_acc"].mean(),
                         f"{prefix}_test": side["test_acc"].mean(),
                         f"{prefix}_test_std": side["test_acc"].std()}  # fmt: skip
    return rows


def arm(prefix: str, selection, model: str) -> dict:
    """One arm of a cell: its chosen setting, validation and test accuracy."""
    row = selection.table[selection.table["model"] == model].iloc[0]
    setting = ", ".join(f"{k}={row[k]}" for k in selection.tuned)
    return {f"{prefix}_setting": setting,
            f"{prefix}_val": row[selection.column],
            f"{prefix}_test": row["test_acc_mean"],
            f"{prefix}_test_std": row["test_acc_std"]}  # fmt: skip


def verdict(table: pd.DataFrame) -> list[str]:
    """Per comparison, one sentence: is the sign of the tuned gap the same in every
    cell, and if not, which choice flips it."""
    sentences = []
    for comparison, whole in table.groupby("comparison", sort=False):
        part = whole[whole["n"] >= MIN_PAIRS]  # a sign needs a spread to judge it by
        lone = len(whole) - len(part)
        unjudged = (
            f" ({plural(lone, 'cell')} with fewer than {MIN_PAIRS} seed pairs "
            f"{'is' if lone == 1 else 'are'} not counted)"
            if lone
            else ""
        )
        if part.empty:
            sentences.append(
                f"{comparison}: no cell has {MIN_PAIRS} or more seed pairs, too few "
                "to say whether the sign of the gap depends on the protocol."
            )
            continue
        signs = np.sign(part["mean"])
        as_run = "model_setting" in part and (part["model_setting"] == "as run").all()
        gap = "gap" if as_run else "tuned gap"
        sure = int((part["p_holm"] < 0.05).sum())
        held = (
            f"{sure} of {len(part)} cells' gaps differ from zero after Holm's "
            "correction (p < 0.05)"
        )
        if (signs > 0).all() or (signs < 0).all():
            direction = "positive" if (signs > 0).all() else "negative"
            sentences.append(
                f"{comparison}: the sign of the {gap} is the same in every cell "
                f"({direction} in all {plural(len(part), 'cell')}){unjudged}; {held}."
            )
            continue
        flip = flipping_factor(part)
        if flip:
            levels = "; ".join(
                f"{sign_word(signs[level_rows.index].iloc[0])} in every cell with "
                f"{describe_level(flip, level)}"
                for level, level_rows in part.groupby(part[flip].astype(str))
            )
            how = f": it flips with {FACTORS[flip]} ({levels})"
        else:
            cells_signs = "; ".join(
                f"{sign_word(sign)} in {describe_cell(row)}"
                for sign, (_, row) in zip(signs, part.iterrows())
            )
            uniform = uniform_levels(part)
            but = f"; but {uniform}" if uniform else ""
            how = f", and no single choice explains the flips ({cells_signs}{but})"
        sentences.append(
            f"{comparison}: the sign of the {gap} is not the same in every "
            f"cell{how}{unjudged}; {held}."
        )
    return [*sentences, *robust_verdict(table)]


def robust_verdict(table: pd.DataFrame) -> list[str]:
    """Per comparison whose cells have heavy tails or a mean and an IQM of
    different signs, one sentence: the verdict by the IQM, and where the mean
    alone would mislead."""
    if "iqm" not in table:
        return []  # tables of older versions
    sentences = []
    for comparison, whole in table.groupby("comparison", sort=False):
        part = whole[whole["n"] >= MIN_PAIRS]
        heavy = part[part["heavy_tailed"].astype(bool)]
        differ = part[part["signs_differ"].astype(bool)]
        if heavy.empty and differ.empty:
            continue
        positive = int((part["iqm"] > 0).sum())
        where = "; ".join(
            f"{describe_cell(row)}: mean {row['mean']:+.4f}, IQM {row['iqm']:+.4f}"
            for _, row in differ.iterrows()
        )
        sentences.append(
            f"{comparison}, not by the mean alone: {plural(len(heavy), 'cell')} of "
            f"{len(part)} {'has' if len(heavy) == 1 else 'have'} heavy-tailed gaps "
            f"and in {plural(len(differ), 'cell')} the mean and the IQM differ in "
            f"sign{f' ({where})' if where else ''}; by the IQM the gap is positive "
            f"in {positive} of {plural(len(part), 'cell')}."
        )
    return sentences


def flipping_factor(part: pd.DataFrame) -> Optional[str]:
    """The protocol factor whose levels each hold one sign (and not all the same)."""
    signs = np.sign(part["mean"])
    for factor in FACTORS:
        by_level = signs.groupby(part[factor].astype(str))
        if by_level.nunique().max() == 1 and signs.nunique() > 1:
            return factor
    return None


def uniform_levels(part: pd.DataFrame) -> str:
    """'every cell with precise statistics is positive', for each level of a factor
    whose cells (two or more) share one sign."""
    signs = np.sign(part["mean"])
    found = []
    for factor in FACTORS:
        for level, rows in part.groupby(part[factor].astype(str)):
            level_signs = signs[rows.index]
            if len(rows) > 1 and level_signs.nunique() == 1:
                found.append(
                    f"every cell with {describe_level(factor, level)} is "
                    f"{sign_word(level_signs.iloc[0])}"
                )
    return ", ".join(found)


def sign_word(sign: float) -> str:
    return "positive" if sign > 0 else "negative" if sign < 0 else "zero"


def describe_level(factor: str, level: str) -> str:
    if factor == "evaluation":
        return f"{statistics_word(level)} statistics"
    if factor == "budget":
        return f"{level} epochs"
    return f"drop_last={level.lower()}"


def describe_cell(row) -> str:
    return (
        f"drop_last={str(row['data.drop_last']).lower()}, "
        f"{statistics_word(row['evaluation'])} statistics, "
        f"epoch {int(row['budget'])}"
    )
