"""report.md: the sweep's observations in sentences, written from the tables."""

from pathlib import Path

import pandas as pd

from fashionbn.analysis.markdown import (
    group_label,
    mean_std,
    plural,
    summary_markdown,
)
from fashionbn.analysis.protocol import describe_evaluation
from fashionbn.analysis.sections import (
    collapse_section,
    comparisons_section,
    generalisation_line,
    robustness_section,
    why_section,
)
from fashionbn.analysis.seeds import seeds_section
from fashionbn.analysis.stats import last_epochs
from fashionbn.analysis.summary import Analysis
from fashionbn.analysis.table import Sweep
from fashionbn.analysis.tuned import tuned_section


def protocol_lines(sweep: Sweep, analysis: Analysis) -> list[str]:
    """How the numbers were evaluated, at which epoch, and what they do not test."""
    lines = [f"Evaluation: {describe_evaluation(analysis.evaluation)}."]
    if analysis.at_epoch is not None:
        lines.append(
            f"Every number is at epoch {analysis.at_epoch} (--at-epoch) of the runs "
            "that lasted that long: the learning rate is constant, so those epochs "
            f"are the {analysis.at_epoch}-epoch run."
        )
    results = sweep.results
    untuned = analysis.selection is None and not analysis.selection_note
    if untuned and "optim.lr" in results and results["optim.lr"].nunique() == 1:
        lr = results["optim.lr"].iloc[0]
        drop_last = results.get("data.drop_last", pd.Series([False])).iloc[0]
        protocol = (
            "the notebook's protocol (the epoch's last incomplete batch kept, "
            "BatchNorm's running statistics)"
            if not drop_last and analysis.evaluation == "default"
            else "one protocol"
        )
        lines.append(
            f"These gaps compare the models at one learning rate (optim.lr={lr}, "
            f"the same for both, not tuned) under {protocol}; `experiment=robust` "
            "tests whether the answer survives tuning each model's learning rate and "
            "the protocol's choices."
        )
    return lines


def header(sweep: Sweep, sweep_dirs: list[Path]) -> list[str]:
    """Which runs the numbers come from, and what differs between them."""
    keys, results = sweep.group_keys, sweep.results
    counts = [plural(results["run"].nunique(), "complete run")]
    counts += [f"{len(sweep.diverged)} diverged"] if sweep.diverged else []
    counts += [f"{len(sweep.skipped)} skipped"] if sweep.skipped else []
    if sweep.duplicates:
        counts.append(f"{plural(len(sweep.duplicates), 'duplicate')} counted once")
    if sweep.extended:
        counts.append(
            f"{plural(len(sweep.extended), 'shorter run')} counted as the longer run "
            "it is the start of"
        )
    listed = sweep.diverged or sweep.skipped or sweep.duplicates or sweep.extended
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
    lines += [f"**Warning:** {split_network_warning(model, keys)}"
              for model, keys in sweep.split_models.items()]  # fmt: skip
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


def split_network_warning(model: str, keys: list[str]) -> str:
    """One model name whose runs are several networks."""
    return (
        f"model={model} names more than one network (its runs differ in "
        f"{', '.join(keys)}, unlike the other models'): a model name is an arm of "
        "the comparison, and a gap pairs only runs with equal values of these keys; "
        "give each network its own name (a model YAML, or model.name=...)"
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
    if not analysis.collapses.empty:
        lines.append(
            f"- {plural(len(analysis.collapses), 'run')} collapsed at the evaluated "
            "epoch (test or validation accuracy more than 0.2 below its training "
            "accuracy; listed under 'Evaluation collapses'): the means above include "
            f"{'it' if len(analysis.collapses) == 1 else 'them'}."
        )
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
        where = [k for k in keys if k != "model"]
        within = f" within a group of equal {', '.join(where)}" if where else ""
        return [
            f"- No gap to {reference}: the runs do not contain both model={reference} "
            f"and another model with matching seeds{within}."
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
    lines = ["# fashionbn report", "", *header(sweep, sweep_dirs)]
    lines += [*protocol_lines(sweep, analysis), ""]
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
            analysis.by_statistic,
        )  # fmt: skip
    if analysis.robustness is not None:
        lines += robustness_section(analysis.robustness, analysis.verdict)
    diverged = sweep.diverged_params
    runs = {*sweep.results["run"], *([] if diverged.empty else diverged["run"])}
    lines += seeds_section(
        analysis.comparisons, analysis.robustness, sweep.results, sweep_dirs,
        analysis.precision, keys, sorted(runs),
    )  # fmt: skip
    if not analysis.collapses.empty:
        lines += collapse_section(
            analysis.collapses, analysis.collapse_reasons, sweep.results, keys
        )
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
        ("Shorter runs of longer ones (their epochs are the first epochs of a "
         "longer run of the same config, e.g. the run it was extended from: counted "
         "once, as the longer run; `--at-epoch E` reads a shorter budget)",
         [(run, f"the first epochs of `{longer}`")
          for run, longer in sweep.extended]),
    ]  # fmt: skip
    for title, entries in sections:
        if entries:
            lines += [f"## {title}", ""]
            lines += [f"- `{run}`: {why}" for run, why in entries]
            lines.append("")
    return "\n".join(lines)
