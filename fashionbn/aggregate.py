"""`python -m fashionbn.aggregate [SWEEP_DIR ...]`: sweep dirs -> tables, plots, report.

Reads only what the runs left on disk (`.hydra/config.yaml`, `.hydra/overrides.yaml`,
`metrics.csv`, `status.json` where present), never trains, so it can be re-run at any
time, also on a sweep copied from another machine.
"""

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml
from scipy import stats

from fashionbn.results import (
    COMPLETE,
    DIVERGED,
    FAILED,
    METRIC_COLUMNS,
    METRICS_FILE,
    atomic_write,
    read_status,
)

METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds"]
BASELINE = "baseline"
# overrides that say where or how a job ran, not what it computed
NON_PARAMETERS = ("hydra.", "hydra/", "data.root", "data.system_dir", "data.download")
NON_PARAMETER_KEYS = {"device", "threads", "force"}


class AggregateError(Exception):
    """Nothing usable to aggregate; the message says why."""


class RunDiverged(ValueError):
    """The run stopped early because its loss blew up (status.json says so)."""


@dataclass
class Sweep:
    """Everything read from one or more sweep dirs."""

    results: pd.DataFrame  # tidy: one row per (run, epoch)
    params: list[str]  # override keys found, as columns of `results`
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, reason)
    diverged: list[tuple[str, str]] = field(default_factory=list)  # (run dir, how)

    @property
    def group_keys(self) -> list[str]:
        """Parameters other than seed that take more than one value across runs."""
        return [
            p
            for p in self.params
            if p != "seed" and self.results[p].nunique(dropna=False) > 1
        ]


def _parse_value(text: str):
    """'0.01' -> 0.01, '3' -> 3, 'batchnorm' -> 'batchnorm'; lists stay strings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str)) else text


def _is_parameter(key: str) -> bool:
    return key not in NON_PARAMETER_KEYS and not key.startswith(NON_PARAMETERS)


def read_run(job_dir: Path) -> tuple[dict, pd.DataFrame]:
    """(parameters from the overrides, metrics) of one job dir; raises ValueError."""
    try:
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"unreadable .hydra files ({err})") from err
    if not isinstance(config, dict) or not isinstance(overrides, list):
        raise ValueError("malformed .hydra/config.yaml or overrides.yaml")
    params = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        if _is_parameter(key):
            params[key] = _parse_value(value)
    params.setdefault("model", config.get("model", {}).get("name"))
    params.setdefault("seed", config.get("seed"))

    epochs = config.get("epochs")
    status = read_status(job_dir) or {}  # hand-made or older dirs may have none
    if status.get("status") == FAILED:
        raise ValueError(
            f"failed after {status.get('epochs_done')} of {epochs} epochs: "
            f"{status.get('error')}"
        )
    metrics_path = job_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise ValueError(f"no {METRICS_FILE}")
    try:
        metrics = pd.read_csv(metrics_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"unreadable {METRICS_FILE} ({err})") from err
    if list(metrics.columns) != METRIC_COLUMNS:
        raise ValueError(
            f"{METRICS_FILE} has columns {list(metrics.columns)}, "
            f"expected {METRIC_COLUMNS}"
        )
    if metrics["epoch"].tolist() != list(range(1, len(metrics) + 1)):
        raise ValueError(f"{METRICS_FILE} epochs are not 1..n")
    if status.get("status") == DIVERGED:
        raise RunDiverged(
            f"diverged at epoch {len(metrics)} (train_loss "
            f"{metrics['train_loss'].iloc[-1]:.4g})"
        )
    if len(metrics) != epochs or status.get("status", COMPLETE) != COMPLETE:
        raise ValueError(f"incomplete: {len(metrics)} of {epochs} epochs")
    return params, metrics


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every dir below `sweep_dir` (or itself) that Hydra ran a job in."""
    return sorted(p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml"))


def read_sweep(sweep_dirs: list[Path]) -> Sweep:
    """Read every job of the given sweep dirs; incomplete or broken runs are skipped."""
    rows, skipped, diverged, params = [], [], [], []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise AggregateError(f"{sweep_dir}: no such directory")
        for job_dir in find_job_dirs(sweep_dir):
            try:
                run_params, metrics = read_run(job_dir)
            except RunDiverged as err:
                diverged.append((str(job_dir), str(err)))
                continue
            except ValueError as err:
                skipped.append((str(job_dir), str(err)))
                continue
            params += [p for p in run_params if p not in params]
            rows.append(metrics.assign(run=str(job_dir), **run_params))
    if not rows:
        where = ", ".join(map(str, sweep_dirs))
        detail = (
            f"; {len(skipped) + len(diverged)} unusable" if skipped or diverged else ""
        )
        raise AggregateError(f"no complete runs found in {where}{detail}")
    params = [p for p in ("model", *sorted(params)) if p != "seed"] + ["seed"]
    params = list(dict.fromkeys(params))
    results = pd.concat(rows, ignore_index=True)[["run", *params, *METRIC_COLUMNS]]
    return Sweep(results=results, params=params, skipped=skipped, diverged=diverged)


def load_sweep(*sweep_dirs: str | Path) -> pd.DataFrame:
    """Tidy results (one row per run and epoch) of the sweep dirs, for notebooks."""
    return read_sweep([Path(d) for d in sweep_dirs]).results


def summarize(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group and epoch: n, mean and std (across seeds) of every metric."""
    grouped = results.groupby([*group_keys, "epoch"], dropna=False)
    summary = grouped[METRICS].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    return summary.reset_index()


def paired_gaps(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Test-accuracy difference of every other model minus the baseline, paired by seed
    and all other parameters; empty when the sweep lacks a baseline or another model."""
    if "model" not in group_keys or BASELINE not in set(results["model"]):
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
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gap_intervals(gaps: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Mean gap with a 95 % t-interval over paired seeds, per comparison and epoch."""
    keys = ["comparison", *[k for k in group_keys if k != "model"], "epoch"]
    rows = []
    for key, part in gaps.groupby(keys, dropna=False):
        n, mean = len(part), part["gap"].mean()
        half = (
            stats.t.ppf(0.975, n - 1) * part["gap"].std(ddof=1) / math.sqrt(n)
            if n > 1
            else math.nan
        )
        rows.append({**dict(zip(keys, key)), "n": n, "mean": mean,
                     "ci_low": mean - half, "ci_high": mean + half})  # fmt: skip
    return pd.DataFrame(rows)


def epochs_to_reach(
    results: pd.DataFrame, group_keys: list[str], threshold: float
) -> pd.DataFrame:
    """Per group: runs, how many reached test_acc >= threshold, mean first epoch."""
    first = results[results["test_acc"] >= threshold].groupby("run")["epoch"].min()
    runs = results.drop_duplicates("run").set_index("run")
    runs["first_epoch"] = first
    grouped = runs.groupby(group_keys, dropna=False) if group_keys else [((), runs)]
    rows = []
    for key, part in grouped:
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(group_keys, key)), "n": len(part),
                     "reached": int(part["first_epoch"].notna().sum()),
                     "mean_epoch": part["first_epoch"].mean()})  # fmt: skip
    return pd.DataFrame(rows)


def group_label(row: pd.Series, group_keys: list[str]) -> str:
    """'model=batchnorm, optim.lr=0.01' (or 'all runs' when nothing but seed varies)."""
    return ", ".join(f"{k}={row[k]}" for k in group_keys) or "all runs"


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
    for metric in ("test_acc", "test_loss", "train_acc", "train_loss"):
        table[metric] = [
            mean_std(m, s, n)
            for m, s, n in zip(
                summary[f"{metric}_mean"], summary[f"{metric}_std"], summary["n"]
            )
        ]
    return markdown_table(table)


def write_report(
    sweep: Sweep,
    summary: pd.DataFrame,
    intervals: pd.DataFrame,
    reach: pd.DataFrame,
    threshold: float,
    figures: list[str],
    notes: list[str],
    sweep_dirs: list[Path],
) -> str:
    """The assignment's 'Observations', written from the numbers, as markdown."""
    keys = sweep.group_keys
    last = int(summary["epoch"].max())
    lines = [
        "# fashionbn report",
        "",
        f"Sweep: {', '.join(f'`{d}`' for d in sweep_dirs)}. "
        f"{plural(sweep.results['run'].nunique(), 'complete run')}"
        + (f"; {len(sweep.diverged)} diverged" if sweep.diverged else "")
        + (f"; {len(sweep.skipped)} skipped" if sweep.skipped else "")
        + (" (listed below)." if sweep.skipped or sweep.diverged else "."),
        f"Groups differ in: {', '.join(keys) if keys else 'nothing but seed'}; "
        "± is the standard deviation across seeds (n runs).",
        "",
        "## Observations",
        "",
    ]
    for epoch, name in ((1, "epoch 1"), (last, f"the last epoch ({last})")):
        at = summary[summary["epoch"] == epoch]
        cells = [
            f"{group_label(row, keys)}: "
            f"{mean_std(row.test_acc_mean, row.test_acc_std, row.n)}"
            for _, row in at.iterrows()
        ]
        lines.append(f"- Test accuracy at {name}: " + "; ".join(cells) + ".")
    if intervals.empty:
        lines.append(
            "- No BatchNorm − baseline gap: the sweep does not contain both a "
            "baseline and another model with matching seeds."
        )
    for epoch in sorted({1, last}) if not intervals.empty else []:
        for _, row in intervals[intervals["epoch"] == epoch].iterrows():
            where = group_label(row, [k for k in keys if k != "model"])
            where = "" if where == "all runs" else f" ({where})"
            ci = (
                f"95 % CI [{row.ci_low:+.4f}, {row.ci_high:+.4f}], paired t-interval "
                f"over n={int(row.n)} seeds"
                if row.n > 1
                else "n=1, no interval"
            )
            lines.append(
                f"- Gap {row.comparison}{where} at epoch {epoch}: "
                f"{row['mean']:+.4f} ({ci})."
            )
    at_last = summary[summary["epoch"] == last].dropna(subset=["test_acc_std"])
    if len(at_last) > 1:
        ordered = at_last.sort_values("test_acc_std")
        steady, shaky = ordered.iloc[0], ordered.iloc[-1]
        lines.append(
            f"- Most stable across seeds at epoch {last}: {group_label(steady, keys)} "
            f"(std {steady.test_acc_std:.4f}); least stable: "
            f"{group_label(shaky, keys)} (std {shaky.test_acc_std:.4f})."
        )
    cells = []
    for _, row in reach.iterrows():
        reached = (
            f"epoch {row.mean_epoch:.1f} on average "
            f"({int(row.reached)}/{int(row.n)} runs)"
            if row.reached
            else "not reached"
        )
        cells.append(f"{group_label(row, keys)}: {reached}")
    lines.append(
        f"- Epochs to reach {threshold:.0%} test accuracy: " + "; ".join(cells) + "."
    )
    lines += ["", "## Summary (mean ± std across seeds)", "",
              summary_markdown(summary, keys), ""]  # fmt: skip
    if figures or notes:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
        lines += [f"*{note}*" for note in notes]
        lines.append("")
    if sweep.diverged:
        lines += ["## Diverged runs (left out of every number above)", ""]
        lines += [f"- `{run}`: {how}" for run, how in sweep.diverged]
        lines.append("")
    if sweep.skipped:
        lines += ["## Skipped runs (left out of every number above)", ""]
        lines += [f"- `{run}`: {reason}" for run, reason in sweep.skipped]
        lines.append("")
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda f: frame.to_csv(f, index=False))


def aggregate(
    sweep_dirs: list[Path], out_dir: Optional[Path] = None, threshold: float = 0.70
) -> Path:
    """Write results.csv, summary.csv/.md, plots and report.md; return the report."""
    from fashionbn import plot  # matplotlib is only needed here

    sweep = read_sweep(sweep_dirs)
    out_dir = Path(out_dir or sweep_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for run, how in sweep.diverged:
        print(f"diverged {run}: {how}", file=sys.stderr)
    for run, reason in sweep.skipped:
        print(f"skipped {run}: {reason}", file=sys.stderr)
    keys = sweep.group_keys
    summary = summarize(sweep.results, keys)
    gaps = paired_gaps(sweep.results, keys)
    intervals = gap_intervals(gaps, keys) if not gaps.empty else pd.DataFrame()

    write_csv(out_dir / "results.csv", sweep.results)
    write_csv(out_dir / "summary.csv", summary)
    write_text(out_dir / "summary.md", summary_markdown(summary, keys) + "\n")
    figures, notes = ["test_accuracy.png"], []
    plot.save(plot.accuracy_curves(sweep.results, keys), out_dir / "test_accuracy.png")
    if intervals.empty:
        notes.append(
            "accuracy_gap.png skipped: the sweep needs model=baseline and another "
            "model with the same seeds"
        )
        print(notes[-1], file=sys.stderr)
    else:
        figure = plot.accuracy_gap(intervals, [k for k in keys if k != "model"])
        plot.save(figure, out_dir / "accuracy_gap.png")
        figures.append("accuracy_gap.png")
    reach = epochs_to_reach(sweep.results, keys, threshold)
    report = write_report(
        sweep, summary, intervals, reach, threshold, figures, notes, sweep_dirs
    )
    write_text(out_dir / "report.md", report)
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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashionbn.aggregate",
        description=(
            "Collect finished runs of one or more Hydra sweeps into results.csv (one "
            "row per run and epoch), summary.csv/.md (mean ± std across seeds), "
            "test_accuracy.png, accuracy_gap.png and report.md. Reads only the job "
            "dirs' .hydra/ and metrics.csv files; never trains."
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
        "--threshold", type=float, default=0.70,
        help="test accuracy whose first epoch the report gives (default: 0.70)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        sweep_dirs = args.sweep_dirs or [newest_sweep()]
        report = aggregate(sweep_dirs, args.out, args.threshold)
    except AggregateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    print(f"tables and plots: {report.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
