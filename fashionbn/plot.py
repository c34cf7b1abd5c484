"""Tidy results -> seaborn figures. Imports nothing from training."""

import io
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FACET = "facet"


def _with_facet(
    frame: pd.DataFrame, keys: list[str]
) -> tuple[pd.DataFrame, Optional[str]]:
    """A copy of `frame` with a facet label column ('optim.lr=0.01, ...') for `keys`."""
    frame = frame.copy()
    if not keys:
        return frame, None
    frame[FACET] = (
        frame[keys]
        .astype(str)
        .agg(lambda row: ", ".join(f"{k}={v}" for k, v in zip(keys, row)), axis=1)
    )
    return frame, FACET


def accuracy_curves(results: pd.DataFrame, keys: list[str]) -> Figure:
    """Test accuracy over epochs: a line per group, band = ±1 std across seeds."""
    sns.set_theme(style="whitegrid")
    hue = "model" if "model" in keys else (keys[0] if keys else None)
    frame, col = _with_facet(results, [k for k in keys if k != hue])
    if hue is not None:
        frame[hue] = frame[hue].astype(str)  # categorical colours even for numbers
    grid = sns.relplot(
        data=frame, x="epoch", y="test_acc", hue=hue, col=col,
        col_wrap=3 if col and frame[col].nunique() > 3 else None,
        kind="line", errorbar="sd", marker="o", markersize=7,
        height=4, aspect=1.2,
    )  # fmt: skip
    grid.set_axis_labels("epoch", "test accuracy")
    if col:
        grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    runs_per_point = results.groupby([*keys, "epoch"]).size()
    n_min, n_max = runs_per_point.min(), runs_per_point.max()
    n = f"n={n_max}" if n_min == n_max else f"n={n_min}–{n_max}"
    grid.figure.suptitle(
        f"Test accuracy per epoch\nline = mean, band = ±1 std across seeds ({n} runs)"
    )
    grid.tight_layout()  # keeps room for the legend outside the axes
    return grid.figure


def accuracy_gap(intervals: pd.DataFrame, facet_keys: list[str]) -> Figure:
    """Per-epoch test-accuracy gap vs the baseline, mean with its 95 % t-interval."""
    sns.set_theme(style="whitegrid")
    frame, col = _with_facet(intervals, facet_keys)
    panels = sorted(frame[col].unique()) if col else [None]
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(6.5, 5 * ncols), 4.5 * nrows),
        sharey=True,
        squeeze=False,
    )
    palette = dict(zip(sorted(frame["comparison"].unique()), sns.color_palette()))
    for ax, panel in zip(axes.flat, panels):
        part = frame if panel is None else frame[frame[col] == panel]
        for comparison, line in part.groupby("comparison"):
            line = line.sort_values("epoch")
            color = palette[comparison]
            ax.plot(line["epoch"], line["mean"], marker="o", color=color,
                    label=comparison)  # fmt: skip
            ax.fill_between(line["epoch"], line["ci_low"], line["ci_high"],
                            color=color, alpha=0.2)  # fmt: skip
        ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy difference")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel is not None:
            ax.set_title(panel)
        if ax is axes.flat[0]:
            ax.legend(loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Test accuracy gap vs baseline, paired by seed\n"
        "line = mean, band = 95 % t-interval over seeds"
    )
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    """`fig` as PNG bytes (the caller writes them); frees the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
