"""Markdown and number formatting shared by the report and summary.md."""

import math

import pandas as pd

from fashionbn.jobs.files import SUMMARISED


def group_label(row: pd.Series, keys: list[str]) -> str:
    """'model=batchnorm, optim.lr=0.01'; a key that does not apply to the group (null,
    e.g. model.bn_momentum of a model without BatchNorm) is left out."""
    return ", ".join(f"{k}={row[k]}" for k in keys if not is_null(row[k]))


def is_null(value) -> bool:
    """A missing value (None/NaN), not a list or text."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def mean_std(mean: float, std: float, n: int) -> str:
    """'0.8093 ± 0.0041 (n=3)'; std is undefined for a single run."""
    spread = f" ± {std:.4f}" if n > 1 else ""
    return f"{mean:.4f}{spread} (n={int(n)})"


def table_row(cells) -> str:
    """One markdown table row; a `|` inside a cell is escaped so that it cannot
    split the cell (a model or value named with one)."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain GitHub-flavoured markdown table of `frame`'s rows.

    Not DataFrame.to_markdown: its tabulate "pipe" format leaves a `|` in a cell
    unescaped, which splits the cell (python-tabulate#241), and it would add a
    dependency for one table."""
    lines = [table_row(frame.columns), "|" + "---|" * len(frame.columns)]
    lines += [table_row(row) for row in frame.itertuples(False)]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, group_keys: list[str]) -> str:
    """The summary as a markdown table of 'mean ± std (n)' cells; a key that does
    not apply to a group (null, e.g. model.bn_momentum of the baseline) is '—'."""
    table = summary[[*group_keys, "epoch"]].copy()
    for key in group_keys:
        table[key] = ["—" if is_null(v) else v for v in table[key]]
    metrics = [m for m in SUMMARISED  # without timings, or columns no run measured
               if m != "seconds" and summary[f"{m}_mean"].notna().any()]  # fmt: skip
    for metric in metrics:
        table[metric] = [
            mean_std(m, s, n)
            for m, s, n in zip(
                summary[f"{metric}_mean"], summary[f"{metric}_std"], summary["n"]
            )
        ]
    return markdown_table(table)


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


def robust_cell(row, name: str) -> str:
    """'+0.0100 [+0.0085, +0.0112]': a gap's IQM or median with its bootstrap
    interval (no interval below the bootstrap's pairs)."""
    value = signed(row[name])
    bounds = interval(row[f"{name}_low"], row[f"{name}_high"])
    return value if bounds == "—" else f"{value} {bounds}"


def tail_note(row) -> str:
    """What a gap's distribution says about its mean, or '—': mean and IQM point
    different ways, heavy tails (excess kurtosis, seeds past the far-out fence)."""
    notes = []
    if bool(row.get("signs_differ", False)):
        notes.append("**mean and IQM differ in sign**")
    if bool(row.get("heavy_tailed", False)):
        facts = []
        kurtosis = row.get("kurtosis", math.nan)
        if isinstance(kurtosis, float) and math.isfinite(kurtosis):
            facts.append(f"excess kurtosis {kurtosis:.2f}")
        far = int(row.get("far_out", 0) or 0)
        if far:
            facts.append(plural(far, "far-out pair"))
        notes.append(f"heavy tails ({', '.join(facts)}): read the IQM")
    return "; ".join(notes) or "—"
