"""Tables -> figures. Draws what fashionbn.stats computed; computes no statistics and
imports nothing from training."""

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def facet_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'optim.lr=0.01, batch_size=32' per row ('' when there are no keys)."""
    if not keys:
        return pd.Series("", index=frame.index)
    return (
        frame[keys]
        .astype(str)
        .agg(lambda row: ", ".join(f"{k}={v}" for k, v in zip(keys, row)), axis=1)
    )


def panels(
    frame: pd.DataFrame, facet_keys: list[str], width: float = 5.0
) -> tuple[Figure, list[tuple[Axes, pd.DataFrame, str]]]:
    """A grid of axes, one per value of facet_keys (max 3 columns), with its rows."""
    sns.set_theme(style="whitegrid")
    labels = facet_labels(frame, facet_keys)
    names = sorted(labels.unique())
    ncols = min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(6.5, width * ncols), 4.5 * nrows),
        sharey=True, squeeze=False,
    )  # fmt: skip
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return fig, [
        (ax, frame[labels == name], name) for ax, name in zip(axes.flat, names)
    ]


def band_lines(
    ax: Axes, part: pd.DataFrame, x: str, y: str, low: str, high: str, hue: str,
    colors: dict,
) -> None:  # fmt: skip
    """A line of y over x per value of hue, with a band from low to high."""
    for name, line in part.groupby(hue, sort=True):
        line = line.sort_values(x)
        color = colors[name]
        ax.plot(line[x], line[y], marker="o", color=color, label=str(name))
        ax.fill_between(line[x], line[low], line[high], color=color, alpha=0.2)


def _palette(values) -> dict:
    names = sorted(pd.Series(values).unique(), key=str)
    return dict(zip(names, sns.color_palette(n_colors=max(len(names), 1))))


def _finish(fig: Figure, axes: list, title: str, xlabel: str, ylabel: str) -> Figure:
    for ax, _, name in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if name:
            ax.set_title(name)
    axes[0][0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_curves(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """Test accuracy over epochs from the summary: a line per model, band = ±1 std
    across seeds; one panel per value of the other group keys."""
    frame = summary.assign(
        low=summary["test_acc_mean"] - summary["test_acc_std"].fillna(0),
        high=summary["test_acc_mean"] + summary["test_acc_std"].fillna(0),
    )
    fig, axes = panels(frame, [k for k in keys if k != "model"])
    colors = _palette(frame["model"])
    for ax, part, _ in axes:
        band_lines(ax, part, "epoch", "test_acc_mean", "low", "high", "model", colors)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n_min, n_max = int(summary["n"].min()), int(summary["n"].max())
    n = f"n={n_max}" if n_min == n_max else f"n={n_min}–{n_max}"
    title = (
        f"Test accuracy per epoch\nline = mean, band = ±1 std across seeds ({n} runs)"
    )
    return _finish(fig, axes, title, "epoch", "test accuracy")


def accuracy_gap(intervals: pd.DataFrame, facet_keys: list[str]) -> Figure:
    """Per-epoch test-accuracy gap vs the baseline, mean with its 95 % t-interval."""
    fig, axes = panels(intervals, facet_keys)
    colors = _palette(intervals["comparison"])
    for ax, part, _ in axes:
        band_lines(ax, part, "epoch", "mean", "ci_low", "ci_high", "comparison", colors)
        ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = (
        "Test accuracy gap vs baseline, paired by seed\n"
        "line = mean, band = 95 % t-interval over seeds"
    )
    return _finish(fig, axes, title, "epoch", "test accuracy difference")


def log_scaled(key: str, values: pd.Series) -> bool:
    """Learning rates, and positive values spanning 10x or more, get a log axis."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or (numbers <= 0).any():
        return False
    return key.split(".")[-1] in ("lr", "eps") or numbers.max() >= 10 * numbers.min()


def tuning(grid: pd.DataFrame, tuned: list[str], by: str) -> Figure:
    """Mean validation metric (±1 std across seeds) against the first tuned key, a
    line per model; one panel per value of the other tuned keys."""
    x, mean, std = tuned[0], f"{by}_mean", f"{by}_std"
    frame = grid.assign(
        low=grid[mean] - grid[std].fillna(0), high=grid[mean] + grid[std].fillna(0)
    )
    numeric = pd.to_numeric(frame[x], errors="coerce").notna().all()
    if not numeric:
        frame[x] = frame[x].astype(str)
    fig, axes = panels(frame, tuned[1:])
    colors = _palette(frame["model"])
    for ax, part, _ in axes:
        band_lines(ax, part, x, mean, "low", "high", "model", colors)
        if numeric and log_scaled(x, frame[x]):
            ax.set_xscale("log")
    n_min, n_max = int(grid["n"].min()), int(grid["n"].max())
    n = f"n={n_max}" if n_min == n_max else f"n={n_min}–{n_max}"
    title = (
        f"Validation: {by} at the last epoch against {x}\n"
        f"line = mean, band = ±1 std across seeds ({n} runs per point)"
    )
    return _finish(fig, axes, title, x, by)


def png(fig: Figure) -> bytes:
    """`fig` as PNG bytes (the caller writes them); frees the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
