"""Seeds where they are needed: per cell (a protocol cell, or a comparison at the
runs' last epoch), the seed pairs the gap's spread — robustly estimated, IQR / 1.349,
so that a few collapsed seeds do not inflate it — needs for a ±precision interval,
and the command that adds just the missing seeds to the same sweep dir (its own
overrides from multirun.yaml, the seed list replaced by the seeds after the last
one; finished runs are skipped, so it extends the sweep, never re-runs it)."""

import math
import shlex
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.analysis.markdown import plural
from fashionbn.analysis.robustness import describe_cell
from fashionbn.analysis.summary import TUNED
from fashionbn.jobs.untrusted import read_yaml


def needed(row: pd.Series) -> float:
    """The pairs a cell needs: from the robust spread where there is one (4 pairs
    and more), else from the observed one."""
    robust = row.get("seeds_needed_robust", math.nan)
    return robust if math.isfinite(robust) else row.get("seeds_needed", math.nan)


def cells_of(comparisons: pd.DataFrame, robustness: Optional[pd.DataFrame]):
    """The cells whose seeds count: the protocol cells where there are some, else
    the tuned comparisons (each model at its best: the answer) where there are
    some, else every comparison at the runs' last epoch."""
    if robustness is not None and not robustness.empty:
        return robustness
    if comparisons.empty:
        return comparisons
    tuned = comparisons[comparisons["comparison"].str.endswith(TUNED)]
    if not tuned.empty:
        return tuned
    last = comparisons.groupby("comparison")["epoch"].transform("max")
    return comparisons[comparisons["epoch"] == last]


def sweep_command(sweep_dir: Path, first: int, count: int) -> Optional[str]:
    """The command that runs seeds first … first+count-1 of the sweep in `sweep_dir`
    with its own overrides (multirun.yaml), or None when they cannot be read."""
    try:
        saved = read_yaml(sweep_dir, "multirun.yaml")
        hydra = saved["hydra"]
        task = [str(o) for o in hydra["overrides"]["task"]]
        launcher = (hydra.get("runtime", {}).get("choices", {}) or {}).get(
            "hydra/launcher"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    kept = [o for o in task if o.split("=", 1)[0].lstrip("+~") != "seed"]
    extra = [] if launcher in (None, "basic") else [f"hydra/launcher={launcher}"]
    words = [
        "python", "-m", "fashionbn.run", "-m", *kept,
        f"seed=range({first},{first + count})", *extra,
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    return " ".join(shlex.quote(word) for word in words)


def seeds_section(
    comparisons: pd.DataFrame,
    robustness: Optional[pd.DataFrame],
    results: pd.DataFrame,
    sweep_dirs: list[Path],
    precision: float,
    keys: Optional[list[str]] = None,
) -> list[str]:
    """'Seeds where they are needed': a line per cell, then the command. `keys`:
    the group keys, whose values besides the model name a comparison's cell."""
    cells = cells_of(comparisons, robustness)
    if cells.empty:
        return []
    lines = ["## Seeds where they are needed", ""]
    missing = 0
    for _, row in cells.iterrows():
        want = needed(row)
        where = cell_name(row, [k for k in keys or [] if k != "model"])
        if not math.isfinite(want):
            lines.append(f"- {where}: n={int(row.n)} pairs, too few to estimate.")
            continue
        spread = row.get("robust_sd", math.nan)
        how = (
            f"its robust spread {spread:.4f}"
            if math.isfinite(spread)
            else "its observed spread"
        )
        lines.append(
            f"- {where}: n={int(row.n)} pairs; {how} needs {int(want)} for "
            f"±{precision:g}"
            + (f": {int(want - row.n)} more." if want > row.n else ": enough.")
        )
        missing = max(missing, int(want - row.n))
    lines.append("")
    if missing <= 0:
        enough = f"Every cell has the seeds its spread needs for ±{precision:g}."
        return [*lines, enough, ""]
    first = int(pd.to_numeric(results["seed"]).max()) + 1
    command = (
        sweep_command(sweep_dirs[0], first, missing) if len(sweep_dirs) == 1 else None
    )
    if command is None:
        return [*lines, f"Add {plural(missing, 'seed')} (seed {first} on) to every "
                "setting of the sweep, then aggregate again.", ""]  # fmt: skip
    return [
        *lines,
        f"To add the {plural(missing, 'missing seed')} (seeds {first}–"
        f"{first + missing - 1}) to every setting of this sweep — finished runs are "
        "skipped, and aggregating again uses the new ones:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def cell_name(row: pd.Series, facets: list[str]) -> str:
    """A cell as the report names it."""
    if "budget" in row and pd.notna(row.get("budget")):
        return f"{row.comparison}, {describe_cell(row)}"
    where = [f"{k}={row[k]}" for k in facets if k in row and pd.notna(row[k])]
    return ", ".join([row.comparison, *where, f"epoch {int(row.epoch)}"])
