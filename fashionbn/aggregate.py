"""`python -m fashionbn.aggregate [SWEEP_DIR ...]`: sweep dirs -> tables, plots, report.

Reads only what the runs left on disk (fashionbn.sweep), never trains, so it can be
re-run at any time, also on a sweep copied from another machine. Every output is
rendered in memory first and then written as one set: a full or read-only --out gets
one error line and keeps its previous outputs, never half of a new set.
"""

import argparse
import io
import math
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.config import FashionbnError
from fashionbn.markdown import plural, summary_markdown
from fashionbn.outputs import OutputError, write_outputs
from fashionbn.pairing import BASELINE, PairingError, paired_gaps, tuned_gaps
from fashionbn.report import Analysis, same_network_warning, write_report
from fashionbn.report_sections import TUNED
from fashionbn.selection import (
    SELECT_BY,
    Selection,
    select,
    tuned_keys,
    why_no_selection,
)
from fashionbn.stats import (
    comparisons,
    diagnostics_summary,
    epochs_to_reach,
    gap_intervals,
    generalisation,
    summarize,
    tuned_comparisons,
    why_numbers,
    with_holm,
)
from fashionbn.sweep import AggregateError, Sweep, load_sweep, read_sweep

__all__ = ["aggregate", "load_sweep", "main", "newest_sweep", "parse_threshold"]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def analyse(
    sweep: Sweep,
    threshold: float,
    precision: float,
    select_by: str,
    reference: str = BASELINE,
) -> Analysis:
    """Every table the outputs are made of; gaps are every model − `reference`."""
    results, keys = sweep.results, sweep.group_keys
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
    )
    if analysis.selection_note is None and tuned_keys(keys):
        selection = select(results, keys, select_by, sweep.diverged_params)
        tuned = tuned_comparisons(
            tuned_gaps(selection.chosen, reference), precision, TUNED
        )
        if tuned.empty:
            analysis.tuned_note = why_no_tuned_gap(selection, sweep, reference)
        table = pd.concat([table, tuned], ignore_index=True)
        analysis.selection = selection
        analysis.tuned_generalisation = generalisation(selection.chosen, ["model"])
    analysis.comparisons = with_holm(table)
    if not sweep.diagnostics.empty:
        analysis.diagnostics = diagnostics_summary(sweep.diagnostics, keys)
        analysis.why = why_numbers(analysis.diagnostics, keys)
    return analysis


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


def aggregate(
    sweep_dirs: list[Path],
    out_dir: Optional[Path] = None,
    threshold: float = 0.70,
    precision: float = 0.01,
    select_by: str = "val_acc",
    baseline: Optional[str] = None,
) -> Path:
    """Write the tables, plots and report.md into out_dir; return the report. Gaps
    are every model − `baseline` (default: the model named baseline; a name given
    here must be one of the runs' models)."""
    from fashionbn import plot  # matplotlib is only needed here

    sweep = read_sweep(sweep_dirs)
    out_dir = Path(out_dir or sweep_dirs[0])
    models = sorted(sweep.results["model"].unique())
    if baseline is not None and baseline not in models:
        raise AggregateError(
            f"--baseline {baseline}: no complete run has model={baseline} (models: "
            f"{', '.join(models)})"
        )
    reference = baseline or BASELINE
    for run, how in sweep.diverged:
        print(f"diverged {run}: {how}", file=sys.stderr)
    for run, reason in sweep.skipped:
        print(f"skipped {run}: {reason}", file=sys.stderr)
    for run, kept in sweep.duplicates:
        print(f"duplicate {run}: same run as {kept}; counted once", file=sys.stderr)
    for names in sweep.same_models:
        print(f"warning: {same_network_warning(names, sweep)}", file=sys.stderr)
    keys = sweep.group_keys
    analysis = analyse(sweep, threshold, precision, select_by, reference)
    files = {
        "results.csv": csv_bytes(sweep.results),
        "summary.csv": csv_bytes(analysis.summary),
        "summary.md": (summary_markdown(analysis.summary, keys) + "\n").encode(),
        "test_accuracy.png": plot.png(plot.accuracy_curves(analysis.summary, keys)),
    }
    figures, notes = ["test_accuracy.png"], []
    if analysis.intervals.empty:
        notes.append(
            f"accuracy_gap.png skipped: the runs need model={reference} and another "
            "model with the same seeds"
        )
        print(notes[-1], file=sys.stderr)
    else:
        figure = plot.accuracy_gap(
            analysis.intervals, [k for k in keys if k != "model"], reference
        )
        files["accuracy_gap.png"] = plot.png(figure)
        figures.append("accuracy_gap.png")
    if not analysis.comparisons.empty:
        files["comparisons.csv"] = csv_bytes(analysis.comparisons)
    if analysis.selection is not None:
        selection = analysis.selection
        files["selection.csv"] = csv_bytes(selection.table)
        figure = plot.tuning(selection.grid, selection.tuned, selection.by)
        files["tuning.png"] = plot.png(figure)
    elif analysis.selection_note:
        print(analysis.selection_note, file=sys.stderr)
    if analysis.tuned_note:
        print(analysis.tuned_note, file=sys.stderr)
    if analysis.diagnostics is not None:
        summary = analysis.diagnostics
        files["diagnostics_summary.csv"] = csv_bytes(summary)
        measured = set(summary["quantity"])
        for name, draw, quantity in (
            ("layer_inputs.png", plot.layer_inputs, "act_in_p50"),
            ("gradients.png", plot.gradients, "grad_norm"),
            ("smoothness.png", plot.smoothness, "beta_smoothness"),
        ):
            if quantity in measured:  # runs of every fashionbn measure all three
                files[name] = plot.png(draw(summary, keys))
                analysis.why_figures.append(name)
    report = write_report(sweep, analysis, figures, notes, sweep_dirs)
    files["report.md"] = report.encode()
    write_outputs(out_dir, files)
    return out_dir / "report.md"


def newest_sweep(multirun_dir: Path = Path("multirun")) -> Path:
    """The most recently written sweep dir (holding multirun.yaml) below multirun/."""
    candidates = list(multirun_dir.glob("**/multirun.yaml"))
    if not candidates:
        raise AggregateError(
            f"no sweep found under {multirun_dir}/: run a sweep first "
            "(make sweep) or pass SWEEP_DIR"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


def parse_threshold(text: str) -> float:
    """'0.7' or '70%' -> 0.7; anything outside (0, 1] (0.7 written as 70) is refused."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        hint = f" (for {text} % write {text}%)" if text.isdigit() else ""
        raise argparse.ArgumentTypeError(
            f"{text}: give a test accuracy as a fraction in (0, 1], e.g. 0.7, or as a "
            f"percentage with %, e.g. 70%{hint}"
        )
    return value


def parse_precision(text: str) -> float:
    """A positive, finite interval half-width."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text}: give the wanted 95 % interval half-width as a number > 0, "
            "e.g. 0.01"
        )
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashionbn.aggregate",
        description=(
            "Collect finished runs of one or more Hydra sweeps into results.csv (one "
            "row per run and epoch), summary.csv/.md (mean ± std across seeds), "
            "comparisons.csv (paired gaps and how sure they are), selection.csv and "
            "tuning.png (each model at its best hyperparameters, chosen on validation "
            "data), test_accuracy.png, accuracy_gap.png and report.md. Reads only the "
            "job dirs' files (status.json, metrics.csv, .hydra/); never trains."
        ),
    )
    parser.add_argument(
        "sweep_dirs", nargs="*", type=Path, metavar="SWEEP_DIR",
        help="sweep dir(s) to combine (default: the newest sweep under multirun/)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="where to write the outputs (default: the first SWEEP_DIR)",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=parse_threshold, default=0.70,
        help="test accuracy whose first epoch the report gives, as a fraction in "
        "(0, 1] or a percentage with %% (default: 0.7)",
    )  # fmt: skip
    parser.add_argument(
        "--select-by", choices=[*SELECT_BY, "none"], default="val_acc",
        help="validation metric that picks each model's best setting of the swept "
        "hyperparameters (default: val_acc, the highest mean); none: no selection",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=None, metavar="NAME",
        help="the model every gap is measured against, e.g. --baseline layernorm "
        "(default: baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", type=parse_precision, default=0.01,
        help="the 95 %% interval half-width the report's 'seeds needed' aims at "
        "(default: 0.01, one accuracy point)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        sweep_dirs = args.sweep_dirs or [newest_sweep()]
        report = aggregate(
            sweep_dirs, args.out, args.threshold, args.precision, args.select_by,
            args.baseline,
        )  # fmt: skip
    except (AggregateError, FashionbnError, OutputError, PairingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    print(f"tables and plots: {report.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
