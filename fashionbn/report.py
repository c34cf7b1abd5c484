"""report.md: the sweep's observations in sentences, written from the tables."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.markdown import (
    group_label,
    mean_std,
    plural,
    summary_markdown,
)
from fashionbn.pairing import BASELINE
from fashionbn.report_sections import (
    comparisons_section,
    generalisation_line,
    tuned_section,
    why_section,
)
from fashionbn.selection import Selection
from fashionbn.stats import last_epochs
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
    reference: str = BASELINE  # every gap is a model − this one
    selection: Optional[Selection] = None
    selection_note: Optional[str] = None
    tuned_note: Optional[str] = None  # why a selection has no tuned gap
    tuned_generalisation: Optional[pd.DataFrame] = None
    diagnostics: Optional[pd.DataFrame] = None  # stats.diagnostics_summary
    why: Optional[pd.DataFrame] = None  # stats.why_numbers, when runs have diagnostics
    why_figures: list[str] = field(default_factory=list)  # the diagnostics' figures


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
    described = "; ".join(
        f"{model} = " + (", ".join(f"{k}={v}" for k, v in options.items()) or "—")
        for model, options in sweep.model_options.items()
    )
    lines.append(
        f"What each model is (keys that vary within a model are among the groups): "
        f"{described}."
    )
    lines += [f"**Warning:** {same_network_warning(names, sweep)}"
              for names in sweep.same_models]  # fmt: skip
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


def same_network_warning(names: list[str], sweep: Sweep) -> str:
    """Two or more model names that are the same network."""
    options = sweep.model_options.get(names[0], {})
    what = ", ".join(f"{k}={v}" for k, v in options.items())
    return (
        f"{' and '.join(f'model={n}' for n in names)} are the same network ({what}): "
        "the name is only a label, and a gap between them measures nothing but seeds; "
        "did an override (e.g. model.norm=...) apply to every model?"
    )


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
    lines += gap_lines(analysis.intervals, keys, analysis.reference)
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


def gap_lines(intervals: pd.DataFrame, keys: list[str], reference: str) -> list[str]:
    """The paired gaps at epoch 1 and at each comparison's own last epoch."""
    if intervals.empty:
        return [
            f"- No gap to {reference}: the runs do not contain both model={reference} "
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
        val_size = sweep.results.get("data.val_size")
        lines += tuned_section(
            analysis.selection, analysis.selection_note or analysis.tuned_note,
            analysis.comparisons, analysis.tuned_generalisation,
            None if val_size is None else int(val_size.iloc[0]), analysis.reference,
        )  # fmt: skip
    if analysis.why is not None:
        lines += why_section(
            analysis.why, keys, analysis.reference, analysis.why_figures
        )
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
