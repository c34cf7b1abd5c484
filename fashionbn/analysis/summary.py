"""The tables a report is made of, computed from a read sweep: summaries, paired gaps
and their statistics, the selection and tuned comparison, collapses, diagnostics.
fashionbn.aggregate writes them; fashionbn.analysis.report puts them into sentences."""

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from fashionbn.analysis.markdown import plural
from fashionbn.analysis.mechanism import diagnostics_summary, why_numbers
from fashionbn.analysis.pairing import BASELINE, paired_gaps, tuned_gaps
from fashionbn.analysis.protocol import collapses, evaluated, why_collapsed
from fashionbn.analysis.selection import (
    SELECT_STATS,
    Selection,
    select,
    tuned_keys,
    why_no_selection,
)
from fashionbn.analysis.stats import (
    comparisons,
    epochs_to_reach,
    gap_intervals,
    generalisation,
    last_epochs,
    performance_profile,
    summarize,
    tuned_comparisons,
    with_holm,
)
from fashionbn.analysis.table import Sweep

TUNED = " (each at its best)"


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
    diagnostics: Optional[pd.DataFrame] = None  # mechanism.diagnostics_summary
    why: Optional[pd.DataFrame] = (
        None  # mechanism.why_numbers, when runs have diagnostics
    )
    why_figures: list[str] = field(default_factory=list)  # the diagnostics' figures
    evaluation: str = "default"  # which evaluation of BatchNorm the metrics are
    at_epoch: Optional[int] = None  # the budget the runs were cut at, if any
    collapses: pd.DataFrame = field(default_factory=pd.DataFrame)  # protocol.collapses
    collapse_reasons: list[str] = field(default_factory=list)  # one per collapse
    by_statistic: pd.DataFrame = field(default_factory=pd.DataFrame)  # by_statistic
    profile: Optional[pd.DataFrame] = None  # stats.performance_profile per model
    profile_where: str = ""  # which runs the profile counts
    robustness: Optional[pd.DataFrame] = None  # robustness.robustness, one row a cell
    verdict: list[str] = field(default_factory=list)  # robustness.verdict


def analyse(
    sweep: Sweep,
    threshold: float,
    precision: float,
    select_by: str,
    reference: str = BASELINE,
    evaluation: str = "default",
    select_stat: str = "mean",
) -> Analysis:
    """Every table the outputs are made of; gaps are every model − `reference`, on
    the metrics of `evaluation` (protocol.evaluated); each model's setting chosen by
    the `select_stat` of `select_by` over seeds."""
    results, keys = evaluated(sweep.results, evaluation), sweep.group_keys
    gaps = paired_gaps(results, keys, reference)
    table = comparisons(gaps, keys, precision)
    analysis = Analysis(
        summary=summarize(results, keys),
        intervals=gap_intervals(gaps, keys) if not gaps.empty else pd.DataFrame(),
        comparisons=table,
        generalisation=generalisation(results, keys),
        reach=epochs_to_reach(results, keys, threshold),
        threshold=threshold,
        precision=precision,
        reference=reference,
        selection_note=why_no_selection(results, keys, select_by),
        evaluation=evaluation,
        collapses=collapses(results),
    )
    analysis.collapse_reasons = [
        why_collapsed(row) for _, row in analysis.collapses.iterrows()
    ]
    if analysis.selection_note is None and tuned_keys(keys):
        selection = select(results, keys, select_by, sweep.diverged_params,
                           select_stat)  # fmt: skip
        plain = tuned_comparisons(
            tuned_gaps(selection.chosen, reference), precision, ""
        )
        tuned = (
            plain
            if plain.empty
            else plain.assign(comparison=plain["comparison"] + TUNED)
        )
        analysis.by_statistic = by_statistic(
            results, keys, select_by, sweep, reference, precision,
            {select_stat: (selection, plain)},
        )  # fmt: skip
        if tuned.empty:
            analysis.tuned_note = why_no_tuned_gap(selection, sweep, reference)
        table = pd.concat([table, tuned], ignore_index=True)
        selection.grid = with_collapses(selection.grid, analysis.collapses, selection)
        analysis.selection = selection
        analysis.tuned_generalisation = generalisation(selection.chosen, ["model"])
    analysis.comparisons = with_holm(table)
    if analysis.selection is not None:
        analysis.profile = performance_profile(analysis.selection.chosen, "model")
        analysis.profile_where = "each model at its chosen setting"
    elif keys == ["model"]:
        last = last_epochs(results, ["run"])
        analysis.profile = performance_profile(last, "model")
        analysis.profile_where = "each model, its runs' last epoch"
    if not sweep.diagnostics.empty:
        analysis.diagnostics = diagnostics_summary(sweep.diagnostics, keys)
        analysis.why = why_numbers(analysis.diagnostics, keys)
    return analysis


def by_statistic(
    results: pd.DataFrame,
    keys: list[str],
    select_by: str,
    sweep: Sweep,
    reference: str,
    precision: float,
    known: dict[str, tuple[Selection, pd.DataFrame]],
) -> pd.DataFrame:
    """Whether the statistic that selects changes the answer: per statistic over
    seeds (SELECT_STATS) and comparison, each model's chosen setting and the tuned
    gap's mean and IQM. `known`: the selection and unlabelled tuned comparisons a
    statistic already gave (the report's own), not computed again."""
    rows = []
    for stat in SELECT_STATS:
        if stat in known:
            selection, table = known[stat]
        else:
            selection = select(results, keys, select_by, sweep.diverged_params, stat)
            gaps = tuned_gaps(selection.chosen, reference)
            table = tuned_comparisons(gaps, precision, "")
        settings = {
            row["model"]: ", ".join(f"{k}={row[k]}" for k in selection.tuned)
            for _, row in selection.table.iterrows()
        }
        for _, row in table.iterrows():
            model = row["comparison"].split(" − ")[0]
            rows.append({
                "select_stat": stat, "comparison": row["comparison"],
                "model_setting": settings.get(model, ""),
                "reference_setting": settings.get(reference, ""), "n": row["n"],
                "mean": row["mean"], "iqm": row["iqm"], "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
            })  # fmt: skip
    return pd.DataFrame(rows)


def why_no_tuned_gap(selection: Selection, sweep: Sweep, reference: str) -> str:
    """Why the tuned comparison has no gap: no reference, or no seed in common."""
    chosen = selection.chosen
    models = sorted(set(chosen["model"]))
    if reference not in models:
        diverged = sweep.diverged_params
        lost = 0 if diverged.empty else int((diverged["model"] == reference).sum())
        if lost:
            return (
                f"No tuned gap: model={reference} has no complete run to compare with "
                f"(its {plural(lost, 'run')} diverged; see Diverged runs)."
            )
        return (
            f"No tuned gap: the runs have no model={reference} to compare with "
            f"(models: {', '.join(models)}); choose the reference with --baseline NAME."
        )
    if len(models) == 1:
        return f"No tuned gap: model={reference} is the only model."
    seeds = "; ".join(
        f"{model} ran seed {', '.join(map(str, sorted(part['seed'])))}"
        for model, part in chosen.groupby("model")
    )
    return (
        f"No tuned gap: the chosen settings share no seed with model={reference}'s, so "
        f"there is no pair to compare ({seeds})."
    )


def with_collapses(
    grid: pd.DataFrame, found: pd.DataFrame, selection: Selection
) -> pd.DataFrame:
    """The selection's grid with the number of collapsed runs per model and setting."""
    keys = ["model", *selection.tuned]
    if found.empty:
        return grid.assign(collapsed=0)
    counts = found.groupby(keys, dropna=False).size().rename("collapsed")
    merged = grid.merge(counts.reset_index(), on=keys, how="left")
    return merged.assign(collapsed=merged["collapsed"].fillna(0).astype(int))
