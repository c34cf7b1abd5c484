"""`python -m fashionbn.aggregate [SWEEP_DIR ...]`: sweep dirs -> tables, plots, report.

Reads only what the runs left on disk (fashionbn.analysis.table),
never trains, so it can be
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

from fashionbn.analysis.markdown import summary_markdown
from fashionbn.analysis.options import SELECT_CHOICES, check_baseline, checked
from fashionbn.analysis.outputs import OutputError, write_outputs
from fashionbn.analysis.pairing import BASELINE, PairingError
from fashionbn.analysis.protocol import EVALUATIONS, at_budget
from fashionbn.analysis.report import (
    same_network_warning,
    split_network_warning,
    write_report,
)
from fashionbn.analysis.robustness import robustness, verdict
from fashionbn.analysis.selection import SELECT_STATS
from fashionbn.analysis.summary import analyse
from fashionbn.analysis.table import AggregateError, load_sweep, read_sweep
from fashionbn.config import FashionbnError

__all__ = ["aggregate", "load_sweep", "main", "newest_sweep", "parse_threshold"]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def aggregate(
    sweep_dirs: list[Path],
    out_dir: Optional[Path] = None,
    threshold: float = 0.70,
    precision: float = 0.01,
    select_by: str = "val_acc",
    baseline: Optional[str] = None,
    metric: str = "default",
    at_epoch: Optional[int] = None,
    budgets: Optional[list[int]] = None,
    select_stat: str = "mean",
) -> Path:
    """Write the tables, plots and report.md into out_dir; return the report. Gaps
    are every model − `baseline` (default: the model named baseline; a name given
    here must be one of the runs' models), on the test/val metrics of `metric`
    (default, or precise BatchNorm statistics), at epoch `at_epoch` of every run that
    lasted that long (default: each run's last). `budgets`: the epochs of the
    robustness section's cells (default: 5 and the runs' last). `select_stat`: the
    statistic over seeds (mean, median, iqm) of `select_by` that selects."""
    from fashionbn.analysis import plot  # matplotlib is only needed here

    options = checked(threshold, precision, select_by, baseline, metric, at_epoch,
                      budgets, select_stat)  # fmt: skip
    full = read_sweep(sweep_dirs, at_epoch)
    sweep = at_budget(full, at_epoch) if at_epoch is not None else full
    out_dir = Path(out_dir or sweep_dirs[0])
    check_baseline(sweep, baseline)
    budgets = list(options.budgets) if options.budgets else None
    reference = baseline or BASELINE
    for run, how in sweep.diverged:
        print(f"diverged {run}: {how}", file=sys.stderr)
    for run, reason in sweep.skipped:
        print(f"skipped {run}: {reason}", file=sys.stderr)
    for run, kept in sweep.duplicates:
        print(f"duplicate {run}: same run as {kept}; counted once", file=sys.stderr)
    for run, longer in sweep.extended:
        print(f"shorter {run}: its epochs are the first epochs of {longer}; counted "
              "once, as that run", file=sys.stderr)  # fmt: skip
    for names in sweep.same_models:
        print(f"warning: {same_network_warning(names, sweep)}", file=sys.stderr)
    for model, keys in sweep.split_models.items():
        print(f"warning: {split_network_warning(model, keys)}", file=sys.stderr)
    keys = sweep.group_keys
    analysis = analyse(sweep, threshold, precision, select_by, reference, metric,
                       select_stat)  # fmt: skip
    analysis.at_epoch = at_epoch
    analysis.robustness = robustness(  # at --at-epoch E, every budget is <= E
        sweep if at_epoch is not None else full, precision, reference, select_by,
        budgets, sweep.notes, select_stat,
    )  # fmt: skip
    for _, row in analysis.collapses.iterrows():
        print(f"collapsed {row.run}: train {row.train_acc:.4f}, test "
              f"{row.test_acc:.4f} at epoch {int(row.epoch)}",
              file=sys.stderr)  # fmt: skip
    files = {
        "results.csv": csv_bytes(sweep.results),
        "summary.csv": csv_bytes(analysis.summary.assign(evaluation=metric)),
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
        files["comparisons.csv"] = csv_bytes(
            analysis.comparisons.assign(evaluation=metric)
        )
    if analysis.selection is not None:
        selection = analysis.selection
        files["selection.csv"] = csv_bytes(selection.table)
        figure = plot.tuning(selection.grid, selection.tuned, selection.by,
                             selection.last)  # fmt: skip
        files["tuning.png"] = plot.png(figure)
    elif analysis.selection_note:
        print(analysis.selection_note, file=sys.stderr)
    if analysis.profile is not None and not analysis.profile.empty:
        files["profile.csv"] = csv_bytes(analysis.profile)
        figure = plot.profile(analysis.profile, "model", "test_acc",
                              analysis.profile_where)  # fmt: skip
        files["profile.png"] = plot.png(figure)
        figures.append("profile.png")
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
    if analysis.robustness is not None:
        analysis.verdict = verdict(analysis.robustness)
        files["robustness.csv"] = csv_bytes(analysis.robustness)
        files["robustness.png"] = plot.png(plot.robustness(analysis.robustness))
        for sentence in analysis.verdict:
            print(f"verdict: {sentence}", file=sys.stderr)
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


def parse_epoch(text: str) -> int:
    """An epoch number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text}: give an epoch number >= 1, e.g. 5")
    return int(text)


def parse_budgets(text: str) -> list[int]:
    """'5,20' -> [5, 20]."""
    return sorted({parse_epoch(part.strip()) for part in text.split(",")})


def make_parser() -> argparse.ArgumentParser:
    """The command's options (the docs' commands are checked against them)."""
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
        "--select-by", choices=SELECT_CHOICES, default="val_acc",
        help="validation metric that picks each model's best setting of the swept "
        "hyperparameters (default: val_acc, the highest mean); none: no selection",
    )  # fmt: skip
    parser.add_argument(
        "--select-stat", choices=SELECT_STATS, default="mean",
        help="the statistic over seeds of --select-by that chooses each model's "
        "setting: mean (default), median, or iqm (the interquartile mean); the "
        "report shows what each of them chooses",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=None, metavar="NAME",
        help="the model every gap is measured against, e.g. --baseline layernorm "
        "(default: baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--metric", choices=EVALUATIONS, default="default",
        help="which evaluation of BatchNorm every number uses: default (its running "
        "statistics) or precise (recomputed over the training samples; needs runs "
        "with precise_bn=true; models without BatchNorm are evaluated as usual)",
    )  # fmt: skip
    parser.add_argument(
        "--at-epoch", type=parse_epoch, default=None, metavar="E",
        help="select and compare at epoch E of every run that lasted that long "
        "(the learning rate is constant, so it is the E-epoch run; default: each "
        "run's last epoch)",
    )  # fmt: skip
    parser.add_argument(
        "--budgets", type=parse_budgets, default=None, metavar="E,E",
        help="the epochs of the 'Does the answer depend on the protocol?' cells "
        "(default: 5 and the runs' last epoch)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", type=parse_precision, default=0.01,
        help="the 95 %% interval half-width the report's 'seeds needed' aims at "
        "(default: 0.01, one accuracy point)",
    )  # fmt: skip
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        sweep_dirs = args.sweep_dirs or [newest_sweep()]
        report = aggregate(
            sweep_dirs, args.out, args.threshold, args.precision, args.select_by,
            args.baseline, args.metric, args.at_epoch, args.budgets, args.select_stat,
        )  # fmt: skip
    except (AggregateError, FashionbnError, OutputError, PairingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    print(f"tables and plots: {report.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
