"""The options of an analysis (the aggregate's flags, load_sweep's arguments), checked
in one place: `python -m fashionbn.aggregate` and `fashionbn.api.load_sweep` refuse
the same values with the same words, and nothing answers a question other than the
one asked (a misspelt `metric` is an error, never another evaluation)."""

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

from fashionbn.analysis.protocol import EVALUATIONS
from fashionbn.analysis.selection import SELECT_BY, SELECT_STATS
from fashionbn.analysis.table import AggregateError, Sweep

SELECT_CHOICES = (*SELECT_BY, "none")


class OptionError(AggregateError, ValueError):
    """An analysis option that cannot be used (one line saying what can)."""


@dataclass(frozen=True)
class Options:
    """What an analysis is asked, checked (see `checked`)."""

    threshold: float = 0.70  # test accuracy whose first epoch the report gives
    precision: float = 0.01  # the 95 % interval half-width "seeds needed" aims at
    select_by: str = "val_acc"  # or val_loss, or none
    baseline: Optional[str] = None  # the reference model (None: "baseline")
    metric: str = "default"  # which evaluation of BatchNorm: default or precise
    at_epoch: Optional[int] = None  # every run cut at this epoch
    budgets: Optional[tuple[int, ...]] = None  # the protocol section's epochs
    select_stat: str = "mean"  # the statistic over seeds that selects (SELECT_STATS)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _epoch(value: Any) -> bool:
    """An epoch number: any integer type (numpy's too) >= 1, not a bool."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= 1)  # fmt: skip


def checked(
    threshold: Any = 0.70,
    precision: Any = 0.01,
    select_by: Any = "val_acc",
    baseline: Any = None,
    metric: Any = "default",
    at_epoch: Any = None,
    budgets: Any = None,
    select_stat: Any = "mean",
) -> Options:
    """The options as given, or OptionError naming the first that cannot be used."""
    if not (_number(threshold) and 0 < threshold <= 1):
        raise OptionError(
            f"threshold={threshold!r}: give a test accuracy as a fraction in (0, 1], "
            "e.g. 0.7"
        )
    if not (_number(precision) and math.isfinite(precision) and precision > 0):
        raise OptionError(
            f"precision={precision!r}: give the wanted 95 % interval half-width as a "
            "number > 0, e.g. 0.01"
        )
    if select_by not in SELECT_CHOICES or not isinstance(select_by, str):
        raise OptionError(
            f"select_by={select_by!r}: choose one of {', '.join(SELECT_CHOICES)}"
        )
    if select_stat not in SELECT_STATS or not isinstance(select_stat, str):
        raise OptionError(
            f"select_stat={select_stat!r}: choose one of {', '.join(SELECT_STATS)} "
            "(the statistic over seeds of the validation metric that selects)"
        )
    if baseline is not None and not (isinstance(baseline, str) and baseline):
        raise OptionError(f"baseline={baseline!r}: give a model's name, e.g. baseline")
    if metric not in EVALUATIONS or not isinstance(metric, str):
        raise OptionError(
            f"metric={metric!r}: choose {' or '.join(EVALUATIONS)} (BatchNorm's "
            "running statistics, or precise ones)"
        )
    if at_epoch is not None and not _epoch(at_epoch):
        raise OptionError(f"at_epoch={at_epoch!r}: give an epoch number >= 1, e.g. 5")
    at_epoch = None if at_epoch is None else int(at_epoch)
    if budgets is not None:
        if isinstance(budgets, (str, bytes)) or not all(map(_epoch, budgets)):
            raise OptionError(
                f"budgets={budgets!r}: give epoch numbers >= 1, e.g. [5, 20]"
            )
        budgets = tuple(sorted({int(b) for b in budgets}))
        if not budgets:
            raise OptionError("budgets=[]: give at least one epoch, e.g. [5, 20]")
    return Options(float(threshold), float(precision), select_by, baseline, metric,
                   at_epoch, budgets, select_stat)  # fmt: skip


def check_baseline(sweep: Sweep, baseline: Optional[str]) -> None:
    """A reference model given by name must be one the complete runs have."""
    models = sorted(sweep.results["model"].unique())
    if baseline is not None and baseline not in models:
        raise OptionError(
            f"--baseline {baseline}: no complete run has model={baseline} (models: "
            f"{', '.join(models)})"
        )
