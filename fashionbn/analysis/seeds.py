"""Seeds where they are needed: per cell (a protocol cell, the tuned comparison, or a
comparison at the runs' last epoch), the seed pairs the gap's spread — robustly
estimated, IQR / 1.349, so that a few collapsed seeds do not inflate it — needs for a
±precision interval, and the command that adds just the missing seeds to every
setting of the sweep. The settings are read from the job dirs themselves (each one's
`.hydra/overrides.yaml`, its seed left out), not from multirun.yaml, which holds only
the last command run into the dir; they are written as one grid when they form one,
else a command per setting. Only plain `key=value` overrides of the run's own config
are repeated (never a `hydra.*` one: nothing read from a dir decides where the new
runs are written); anything else, or a sweep dir whose name Hydra's command line would
read as syntax, gets the count of seeds to add instead of a command."""

import math
import re
import shlex
from pathlib import Path
from typing import Optional

import pandas as pd

from fashionbn.analysis.markdown import plural
from fashionbn.analysis.robustness import describe_cell
from fashionbn.analysis.stats import SPREAD_TOLERANCE
from fashionbn.analysis.summary import TUNED
from fashionbn.jobs.untrusted import read_yaml

MAX_NEEDED = 100_000  # stats.seeds_needed gives up beyond this
MAX_COMMANDS = 12  # settings that form no grid: a command each, up to this many
# a plain override of the run's config: key=value, nothing Hydra or a shell reads as
# syntax (no lists, quotes, interpolations, spaces)
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(/[A-Za-z0-9_.]+)*=[A-Za-z0-9_.+\-:@%/]*")
SAFE_DIR = re.compile(r"[A-Za-z0-9_./+\-:@% ]+")
LAUNCHERS = {"batched", "batched_slurm", "local_parallel", "slurm", "submitit_local",
             "submitit_slurm"}  # fmt: skip


def needed(row: pd.Series) -> float:
    """The pairs a cell needs: from the robust spread where it has one (4 pairs and
    more, some spread in the middle half), else from the observed one; NaN when
    unknown or beyond MAX_NEEDED."""
    robust = row.get("seeds_needed_robust", math.nan)
    spread = row.get("robust_sd", math.nan)
    if math.isfinite(spread) and spread > SPREAD_TOLERANCE:
        return robust
    return row.get("seeds_needed", math.nan)


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


def settings(runs: list[str]) -> Optional[list[list[str]]]:
    """Every distinct setting of the runs — its overrides without the seed, in the
    order the runs wrote them — or None when a run's overrides cannot be read or one
    is not a plain override of the run's config."""
    found: dict[tuple, list[str]] = {}
    for run in runs:
        try:
            overrides = read_yaml(Path(run), ".hydra/overrides.yaml")
        except Exception:  # noqa: BLE001 - any unreadable dir: no command
            return None
        if not isinstance(overrides, list) or not all(
            isinstance(o, str) for o in overrides
        ):
            return None
        kept = []
        for override in overrides:
            key = override.split("=", 1)[0]
            if not PLAIN.fullmatch(override) or key.startswith("hydra"):
                return None
            if key != "seed":
                kept.append(override)
        found.setdefault(tuple(sorted(kept)), kept)
    return list(found.values())


def as_grid(every: list[list[str]]) -> Optional[list[str]]:
    """The settings as one sweep (`key=a,b` per key), when they are exactly the
    grid of their keys' values; else None."""
    keys = [o.split("=", 1)[0] for o in every[0]]
    values: dict[str, list[str]] = {key: [] for key in keys}
    for setting in every:
        pairs = [o.split("=", 1) for o in setting]
        if sorted(k for k, _ in pairs) != sorted(keys):
            return None
        for key, value in pairs:
            if value not in values[key]:
                values[key].append(value)
    size = math.prod(len(v) for v in values.values())
    if size != len(every):
        return None
    return [f"{key}={','.join(values[key])}" for key in keys]


def launcher_of(sweep_dir: Path) -> list[str]:
    """The launcher the sweep's last command chose (multirun.yaml), when it is one
    of fashionbn's, with the hydra.launcher.* values it was given (plain ones
    only); [] otherwise or when unreadable."""
    try:
        saved = read_yaml(sweep_dir, "multirun.yaml")
        chosen = saved["hydra"]["runtime"]["choices"]["hydra/launcher"]
        given = list(saved["hydra"]["overrides"].get("hydra") or [])
    except Exception:  # noqa: BLE001 - the launcher is only a convenience
        return []
    if chosen not in LAUNCHERS:
        return []
    values = [o for o in given if isinstance(o, str) and
              o.startswith("hydra.launcher.") and PLAIN.fullmatch(o)]  # fmt: skip
    return [f"hydra/launcher={chosen}", *values]


def commands(runs: list[str], sweep_dir: Path, first: int, count: int) -> list[str]:
    """The commands that run seeds first … first+count-1 of every setting, or []
    when none can be written safely."""
    every = settings(runs)
    if not every or not SAFE_DIR.fullmatch(str(sweep_dir)):
        return []
    grid = as_grid(every)
    lines = [grid] if grid is not None else every
    if len(lines) > MAX_COMMANDS:
        return []
    extra = launcher_of(sweep_dir)
    seeds = f"seed=range({first},{first + count})"
    return [
        " ".join(
            shlex.quote(word)
            for word in [
                "python",
                "-m",
                "fashionbn.run",
                "-m",
                *line,
                seeds,
                *extra,
                f"hydra.sweep.dir={sweep_dir}",
            ]
        )  # fmt: skip
        for line in lines
    ]


def seeds_section(
    comparisons: pd.DataFrame,
    robustness: Optional[pd.DataFrame],
    results: pd.DataFrame,
    sweep_dirs: list[Path],
    precision: float,
    keys: Optional[list[str]] = None,
    runs: Optional[list[str]] = None,
) -> list[str]:
    """'Seeds where they are needed': a line per cell, then the command(s). `keys`:
    the group keys, whose values besides the model name a comparison's cell; `runs`:
    every job dir of the sweep (complete and diverged), whose settings get seeds."""
    cells = cells_of(comparisons, robustness)
    if cells.empty:
        return []
    lines = ["## Seeds where they are needed", ""]
    missing, beyond = 0, 0
    for _, row in cells.iterrows():
        want = needed(row)
        where = cell_name(row, [k for k in keys or [] if k != "model"])
        if not math.isfinite(want):
            if row.n >= 2:  # a spread, but no count up to MAX_NEEDED meets it
                beyond += 1
                lines.append(
                    f"- {where}: n={int(row.n)} pairs; its spread needs more than "
                    f"{MAX_NEEDED:,} for ±{precision:g}."
                )
            else:
                lines.append(f"- {where}: n={int(row.n)} pairs, too few to estimate.")
            continue
        spread = row.get("robust_sd", math.nan)
        how = (
            f"its robust spread {spread:.4f}"
            if math.isfinite(spread) and spread > SPREAD_TOLERANCE
            else "its observed spread"
        )
        lines.append(
            f"- {where}: n={int(row.n)} pairs; {how} needs {int(want)} for "
            f"±{precision:g}"
            + (f": {int(want - row.n)} more." if want > row.n else ": enough.")
        )
        missing = max(missing, int(want - row.n))
    lines.append("")
    if beyond:
        lines += [
            f"{plural(beyond, 'cell')} would need more than {MAX_NEEDED:,} seeds for "
            f"±{precision:g}: ask for a wider interval (--precision), or reduce the "
            "spread (e.g. the protocol choices that make runs collapse).",
            "",
        ]
    if missing <= 0:
        if not beyond:
            enough = f"Every cell has the seeds its spread needs for ±{precision:g}."
            lines += [enough, ""]
        return lines
    first = int(pd.to_numeric(results["seed"]).max()) + 1
    last = first + missing - 1
    span = f"seed {first}" if missing == 1 else f"seeds {first}–{last}"
    found = (
        commands(runs or sorted(set(results["run"])), sweep_dirs[0], first, missing)
        if len(sweep_dirs) == 1
        else []
    )
    if not found:
        return [*lines, f"Add {plural(missing, 'seed')} ({span}) to every setting of "
                "the sweep, then aggregate again.", ""]  # fmt: skip
    return [
        *lines,
        f"To add the {plural(missing, 'missing seed')} ({span}) to every setting of "
        "this sweep (its settings as its job dirs hold them) — finished runs are "
        "skipped, and aggregating again uses the new ones:",
        "",
        "```bash",
        *found,
        "```",
        "",
    ]


def cell_name(row: pd.Series, facets: list[str]) -> str:
    """A cell as the report names it."""
    if "budget" in row and pd.notna(row.get("budget")):
        return f"{row.comparison}, {describe_cell(row)}"
    where = [f"{k}={row[k]}" for k in facets if k in row and pd.notna(row[k])]
    return ", ".join([row.comparison, *where, f"epoch {int(row.epoch)}"])
