"""report.md: the sweep's observations in sentences, written from the tables."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.selection import Selection
from fashionbn.stats import LEVEL, MIN_BOOTSTRAP_PAIRS, last_epochs
from fashionbn.sweep import Sweep


@dataclass
class Analysis:
    """The tables a report is written from (fashionbn.aggregate computes them)."""

    summary: pd.DataFrame
    intervals: pd.DataFrame  # per comparison and epoch: the t-interval (figure)
    comparisons: pd.DataFrame  # the report's comparisons, every statistic, p_holm
    generalisation: pd.DataFrame
    reach: pd.DataFrame
    threshold: float
    precision: float
    selection: Optional[Selection] = None
    selection_note: Optional[str] = None
    tuned_generalisation: Optional[pd.DataFrame] = None


def group_label(row: pd.Series, keys: list[str]) -> str:
    """'model=batchnorm, optim.lr=0.01'."""
    return ", ".join(f"{k}={row[k]}" for k in keys)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def mean_std(mean: float, std: float, n: int) -> str:
    """'0.8093 ± 0.0041 (n=3)'; std is undefined for a single run."""
    spread = f" ± {std:.4f}" if n > 1 else ""
    return f"{mean:.4f}{spread} (n={int(n)})"


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain GitHub-flavoured markdown table of `frame`'s rows."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += [
        "| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(False)
    ]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, group_keys: list[str]) -> str:
    """The summary as a markdown table of 'mean ± std (n)' cells."""
    table = summary[[*group_keys, "epoch"]].copy()
    metrics = ["test_acc", "test_loss", "train_acc", "train_loss"]
    if summary["val_acc_mean"].notna().any():
        metrics += ["val_acc", "val_loss"]
    for metric in metrics:
        table[metric] = [
            mean_std(m, s, n)
            for m, s, n in zip(
                summary[f"{metric}_mean"], summary[f"{metric}_std"], summary["n"]
            )
        ]
    return markdown_table(table)


def header(sweep: Sweep, sweep_dirs: list[Path]) -> list[str]:
    """Which runs the numbers come from, and what differs between them."""
    keys, results = sweep.group_keys, sweep.results
    counts = [plural(results["run"].nunique(), "complete run")]
    counts += [f"{len(sweep.diverged)} diverged"] if sweep.diverged else []
    counts += [f"{len(sweep.skipped)} skipped"] if sweep.skipped else []
    if sweep.duplicates:
        counts.append(f"{plural(len(sweep.duplicates), 'duplicate')} counted once")
    listed = sweep.diverged or sweep.skipped or sweep.duplicates
    models = sorted(results["model"].unique())
    lines = [
        f"Sweep: {', '.join(f'`{d}`' for d in sweep_dirs)}. "
        + "; ".join(counts)
        + (" (listed below)." if listed else "."),
        f"Model{'s' if len(models) > 1 else ''}: {', '.join(models)}. Groups differ "
        f"in: {', '.join(keys)}; ± is the standard deviation across seeds (n runs).",
    ]
    if sweep.model_options:
        described = "; ".join(
            f"{model} = " + ", ".join(f"{k}={v}" for k, v in options.items())
            for model, options in sweep.model_options.items()
        )
        lines.append(f"What each model is: {described}.")
    for key, (kept, others) in sweep.fixed.items():
        lines.append(
            f"Every run used has {key}={kept}; the sweep also had {key}="
            f"{', '.join(others)}, but none of those runs is complete (see below)."
        )
    if sweep.older:
        lines.append(
            f"{plural(len(sweep.older), 'run')} "
            f"{'was' if len(sweep.older) == 1 else 'were'} written by an older "
            "fashionbn (an older results format): aggregated from their files as "
            "they are; re-run them with force=true to bring them up to date."
        )
    lines += [f"Note: {note}." for note in sweep.notes]
    return lines


def observations(sweep: Sweep, analysis: Analysis) -> list[str]:
    keys, summary = sweep.group_keys, analysis.summary
    lines = []
    first = summary[summary["epoch"] == 1]
    lines.append(
        "- Test accuracy at epoch 1: "
        + "; ".join(
            f"{group_label(row, keys)}: "
            f"{mean_std(row.test_acc_mean, row.test_acc_std, row.n)}"
            for _, row in first.iterrows()
        )
        + "."
    )
    last = last_epochs(summary, keys)
    same_end = last["epoch"].nunique() == 1
    where = (
        f"the last epoch ({int(last['epoch'].iloc[0])})"
        if same_end
        else "each group's own last epoch"
    )
    lines.append(
        f"- Test accuracy at {where}: "
        + "; ".join(
            f"{group_label(row, keys)}"
            + ("" if same_end else f" (epoch {int(row.epoch)})")
            + f": {mean_std(row.test_acc_mean, row.test_acc_std, row.n)}"
            for _, row in last.iterrows()
        )
        + "."
    )
    if last["val_acc_mean"].notna().any():
        lines.append(
            f"- Validation accuracy at {where}: "
            + "; ".join(
                f"{group_label(row, keys)}: "
                f"{mean_std(row.val_acc_mean, row.val_acc_std, row.n)}"
                for _, row in last.iterrows()
            )
            + "."
        )
    lines += gap_lines(analysis.intervals, keys)
    spread = last.dropna(subset=["test_acc_std"])
    if len(spread) > 1:
        ordered = spread.sort_values("test_acc_std")
        steady, shaky = ordered.iloc[0], ordered.iloc[-1]

        def at(row: pd.Series) -> str:
            return "" if same_end else f" at epoch {int(row.epoch)}"

        lines.append(
            f"- Most stable across seeds at {where}: {group_label(steady, keys)} "
            f"(std {steady.test_acc_std:.4f}{at(steady)}); least stable: "
            f"{group_label(shaky, keys)} (std {shaky.test_acc_std:.4f}{at(shaky)})."
        )
    lines.append(generalisation_line(analysis.generalisation, keys, "Generalisation"))
    cells = []
    for _, row in analysis.reach.iterrows():
        reached = (
            f"epoch {row.mean_epoch:.1f} on average "
            f"({int(row.reached)}/{int(row.n)} runs)"
            if row.reached
            else "not reached"
        )
        cells.append(f"{group_label(row, keys)}: {reached}")
    lines.append(
        f"- Epochs to reach {analysis.threshold:.0%} test accuracy: "
        + "; ".join(cells)
        + "."
    )
    return lines


def gap_lines(intervals: pd.DataFrame, keys: list[str]) -> list[str]:
    """The paired gaps at epoch 1 and at each comparison's own last epoch."""
    if intervals.empty:
        return [
            "- No gap to the baseline: the runs do not contain both model=baseline "
            "and another model with matching seeds."
        ]
    facet_keys = [k for k in keys if k != "model"]
    lines = []
    for _, part in intervals.groupby(["comparison", *facet_keys], dropna=False):
        last = part["epoch"].max()
        for _, row in part[part["epoch"].isin({1, last})].iterrows():
            where = group_label(row, facet_keys)
            where = f" ({where})" if where else ""
            ci = (
                f"95 % CI [{row.ci_low:+.4f}, {row.ci_high:+.4f}], paired t-interval "
                f"over n={int(row.n)} seeds"
                if row.n > 1
                else "n=1, no interval"
            )
            lines.append(
                f"- Gap {row.comparison}{where} at epoch {int(row.epoch)}: "
                f"{row['mean']:+.4f} ({ci})."
            )
    return lines


def write_report(
    sweep: Sweep,
    analysis: Analysis,
    figures: list[str],
    notes: list[str],
    sweep_dirs: list[Path],
) -> str:
    """The assignment's 'Observations', written from the numbers, as markdown."""
    keys = sweep.group_keys
    lines = ["# fashionbn report", "", *header(sweep, sweep_dirs), ""]
    lines += ["## Observations", ""]
    lines += observations(sweep, analysis)
    lines.append("")
    lines += comparisons_section(analysis.comparisons, keys, analysis.precision)
    if analysis.selection is not None or analysis.selection_note:
        lines += tuned_section(analysis, sweep)
    lines += ["## Summary (mean ± std across seeds)", "",
              summary_markdown(analysis.summary, keys), ""]  # fmt: skip
    if figures or notes:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
        lines += [f"*{note}*" for note in notes]
        lines.append("")
    sections = [
        ("Diverged runs (left out of every number above)", sweep.diverged),
        ("Skipped runs (left out of every number above)", sweep.skipped),
        ("Duplicates (the same run in two dirs, same numbers: counted once)",
         [(dup, f"same run as `{kept}`") for dup, kept in sweep.duplicates]),
    ]  # fmt: skip
    for title, entries in sections:
        if entries:
            lines += [f"## {title}", ""]
            lines += [f"- `{run}`: {why}" for run, why in entries]
            lines.append("")
    return "\n".join(lines)


def signed(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.4f}"


def interval(low: float, high: float, fmt: str = "+.4f") -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "—"
    return f"[{low:{fmt}}, {high:{fmt}}]"


def p_text(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def comparisons_section(table: pd.DataFrame, keys: list[str], precision: float):
    """The statistics of every gap the report states, as a table with its legend."""
    if table.empty:
        return []
    facet_keys = [k for k in keys if k != "model"]
    lines = [
        "## How sure: paired comparisons",
        "",
        "| comparison | where | epoch | n | mean gap | 95 % t-interval | 95 % BCa "
        "bootstrap | P(improvement) [95 % Wilson] | p (paired t) | p (Holm) | "
        f"seeds for ±{precision:g} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        where = ", ".join(
            f"{k}={row[k]}" for k in facet_keys if k in row and pd.notna(row[k])
        )
        seeds = (
            "—" if not math.isfinite(row.seeds_needed) else str(int(row.seeds_needed))
        )
        share = (
            f"{row.p_improve:.2f} "
            f"{interval(row.p_improve_low, row.p_improve_high, '.2f')}"
        )
        cells = [
            row.comparison, where or "—", int(row.epoch), int(row.n),
            signed(row["mean"]), interval(row.ci_low, row.ci_high),
            interval(row.boot_low, row.boot_high),
            share, p_text(row.p_value), p_text(row.p_holm), seeds,
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    family = int(table["p_value"].notna().sum())
    lines += [
        "",
        f"Pairs are seeds (and every other parameter) shared by both models. "
        f"t-interval: Student t over the pairs' gaps. Bootstrap: BCa interval of the "
        f"mean gap (9,999 resamples, fixed random state), given from "
        f"{MIN_BOOTSTRAP_PAIRS} pairs on. P(improvement): the share of pairs in which "
        "the model beats the baseline, ties counting half (rliable's probability of "
        "improvement over matched pairs), with a Wilson score interval. p: two-sided "
        f"paired t-test of a zero mean gap; Holm: corrected for the {family} "
        "comparisons of this report. Seeds: the pairs the observed spread of the gap "
        f"would need for the {LEVEL:.0%} t-interval to be at most ±{precision:g} wide.",
        "",
    ]
    return lines


def generalisation_line(table: pd.DataFrame, keys: list[str], prefix: str) -> str:
    cells = "; ".join(
        f"{group_label(row, keys)}: {mean_std(row['mean'], row['std'], row.n)}"
        for _, row in table.iterrows()
    )
    return (
        f"- {prefix}: train − test accuracy at the last epoch (train accuracy is the "
        f"running accuracy over the epoch's training batches, in training mode): "
        f"{cells}."
    )


def tuned_section(analysis: Analysis, sweep: Sweep) -> list[str]:
    """Each model at its own best setting, chosen on validation data."""
    selection = analysis.selection
    lines = ["## Tuned comparison (each model at its own best hyperparameters)", ""]
    if selection is None:
        return [*lines, analysis.selection_note or "", ""]
    held_out = sweep.results.get("data.val_size")
    held = f"{int(held_out.iloc[0])} " if held_out is not None else ""
    lines.append(
        f"Chosen per model by the mean {selection.by} at the runs' last epoch, over "
        f"seeds, among the values of {', '.join(selection.tuned)} the sweep tried; "
        f"the {held}validation samples are held out of training, and the test set "
        "plays no part in the choice:"
    )
    lines.append("")
    for _, row in selection.table.iterrows():
        setting = ", ".join(f"{k}={row[k]}" for k in selection.tuned)
        chose = row[f"{selection.by}_mean"]
        lines.append(
            f"- {row.model}: {setting} ({selection.by} {chose:.4f}) → test accuracy "
            f"{mean_std(row.test_acc_mean, row.test_acc_std, row.n)}."
        )
    lines += [f"- Warning: {warning}." for warning in selection.warnings]
    tuned = analysis.comparisons[analysis.comparisons["comparison"].str.endswith(TUNED)]
    for _, row in tuned[tuned["epoch"] == tuned["epoch"].max()].iterrows():
        ci = (
            f"95 % CI {interval(row.ci_low, row.ci_high)}, paired t-interval over "
            f"n={int(row.n)} seeds"
            if row.n > 1
            else "n=1, no interval"
        )
        lines.append(
            f"- Gap {row.comparison} at epoch {int(row.epoch)}: {signed(row['mean'])} "
            f"({ci}; the other statistics are in the table above)."
        )
    if analysis.tuned_generalisation is not None:
        lines.append(
            generalisation_line(
                analysis.tuned_generalisation,
                ["model"],
                "Generalisation at the chosen settings",
            )  # fmt: skip
        )
    lines += ["", "![tuning.png](tuning.png)", ""]
    return lines


TUNED = " (each at its best)"
