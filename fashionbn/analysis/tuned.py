"""The report's tuned comparison: each model at its own best setting, chosen on
validation data by a statistic over seeds, what each statistic would choose, and
every setting tried (tuning.png and its caption)."""

from typing import Optional

import pandas as pd

from fashionbn.analysis.markdown import (
    group_label,
    interval,
    mean_std,
    robust_cell,
    signed,
    table_row,
    tail_note,
)
from fashionbn.analysis.sections import generalisation_line
from fashionbn.analysis.selection import Selection
from fashionbn.analysis.summary import TUNED

STAT_WORDS = {"mean": "mean", "median": "median", "iqm": "interquartile mean"}


def tuned_section(
    selection: Optional[Selection],
    note: Optional[str],
    comparisons: pd.DataFrame,
    generalisation: Optional[pd.DataFrame],
    val_size: Optional[int],
    reference: str,
    by_statistic: Optional[pd.DataFrame] = None,
) -> list[str]:
    """Each model at its own best setting, chosen on validation data (or the note
    saying why there is no selection, or no gap), against `reference` at its own."""
    lines = ["## Tuned comparison (each model at its own best hyperparameters)", ""]
    if selection is None:
        return [*lines, note or "", ""]
    held = f"{val_size} " if val_size is not None else ""
    lines.append(
        f"Chosen per model by the {STAT_WORDS[selection.stat]} {selection.by} at the "
        f"runs' last epoch, over seeds, among the values of "
        f"{', '.join(selection.tuned)} the sweep tried; the {held}validation samples "
        "are held out of training, and the test set plays no part in the choice:"
    )
    lines.append("")
    for _, row in selection.table.iterrows():
        setting = ", ".join(f"{k}={row[k]}" for k in selection.tuned)
        chose = row[selection.column]
        stat = "" if selection.stat == "mean" else f"{selection.stat} "
        lines.append(
            f"- {row.model}: {setting} ({stat}{selection.by} {chose:.4f}) → test "
            f"accuracy {mean_std(row.test_acc_mean, row.test_acc_std, row.n)}."
        )
    lines += [f"- Warning: {warning}." for warning in selection.warnings]
    tuned = (
        comparisons[comparisons["comparison"].str.endswith(TUNED)]
        if "comparison" in comparisons
        else comparisons
    )
    if tuned.empty and note:
        lines.append(f"- {note}")
    for _, row in tuned.iterrows():
        ci = (
            f"95 % CI {interval(row.ci_low, row.ci_high)}, paired t-interval over "
            f"n={int(row.n)} seeds"
            if row.n > 1
            else "n=1, no interval"
        )
        at = f"at epoch {int(row.epoch)}"
        if int(row.epoch_reference) != int(row.epoch):
            at += f" ({reference} at epoch {int(row.epoch_reference)})"
        note = tail_note(row)
        lines.append(
            f"- Gap {row.comparison} {at}: {signed(row['mean'])} "
            f"({ci}; IQM {robust_cell(row, 'iqm')}"
            f"{'' if note == '—' else '; ' + note}; the other statistics are in the "
            "table above)."
        )
    if generalisation is not None:
        prefix = "Generalisation at the chosen settings"
        lines.append(generalisation_line(generalisation, ["model"], prefix))
    lines += statistic_lines(by_statistic, selection.by)
    caption = tuning_caption(selection)
    lines += ["", *tuning_table(selection), "", "![tuning.png](tuning.png)", "",
              caption, ""]  # fmt: skip
    return lines


def tuning_caption(selection: Selection) -> str:
    """What tuning.png draws: mean ± 1 std, or — where a setting's values are
    heavy-tailed — the median, the interquartile range and each seed."""
    grid = selection.grid
    if "heavy_tailed" not in grid or not grid["heavy_tailed"].any():
        return (
            f"tuning.png: each setting's mean {selection.by} over seeds (line) ± 1 "
            "standard deviation (band)."
        )
    heavy = "; ".join(
        group_label(row, ["model", *selection.tuned])
        for _, row in grid[grid["heavy_tailed"].astype(bool)].iterrows()
    )
    return (
        f"tuning.png: each setting's median {selection.by} over seeds (line), its "
        "interquartile range (band) and every seed (dots), because some settings' "
        f"values are heavy-tailed ({heavy}): a mean ± std band there would be "
        "drawn by a few collapsed seeds, not by the runs."
    )


def statistic_lines(table: Optional[pd.DataFrame], by: str) -> list[str]:
    """Whether the statistic that selects (mean, median, IQM of `by` over seeds)
    changes the answer: a line per comparison, what each one chooses and the
    tuned gap it gives."""
    if table is None or table.empty:
        return []
    lines = []
    for comparison, part in table.groupby("comparison", sort=False):
        choices = "; ".join(
            f"by the {STAT_WORDS[row.select_stat]}: {row.model_setting} against "
            f"{row.reference_setting}, gap {signed(row['mean'])} "
            f"(IQM {signed(row['iqm'])}, n={int(row.n)})"
            for _, row in part.iterrows()
        )
        same = part[["model_setting", "reference_setting"]].drop_duplicates()
        signs = [
            {(row[of] > 0) - (row[of] < 0) for _, row in part.iterrows()}
            for of in ("mean", "iqm")
        ]
        if len(same) == 1:
            verdict = "every statistic chooses the same settings"
        elif all(len(seen) == 1 for seen in signs):
            verdict = (
                "the statistics choose differently; the gap's sign, by its mean and "
                "by its IQM, is the same"
            )
        else:
            verdict = (
                "**the statistic that selects changes the sign of the gap** (by its "
                "mean or by its IQM)"
            )
        lines.append(f"- Selected by each statistic of {by} over seeds, {comparison}: "
                     f"{verdict} ({choices}).")  # fmt: skip
    return lines


def tuning_table(selection: Selection) -> list[str]:
    """Every setting tried, per model: n, the selection metric and the test accuracy
    (mean ± std over seeds), and how many of its runs collapsed at evaluation."""
    by, grid = selection.by, selection.grid
    header = ["model", *selection.tuned, "n", f"{by} (mean ± std)",
              "test_acc (mean ± std)", "collapsed"]  # fmt: skip
    lines = [table_row(header), "|" + "---|" * len(header)]
    for _, row in grid.iterrows():
        cells = [row.model, *[row[k] for k in selection.tuned], int(row.n),
                 mean_std(row[f"{by}_mean"], row[f"{by}_std"], row.n).split(" (")[0],
                 mean_std(row.test_acc_mean, row.test_acc_std, row.n).split(" (")[0],
                 int(row.get("collapsed", 0))]  # fmt: skip
        lines.append(table_row(cells))
    return lines
