"""Tables -> figures. Draws what fashionbn.analysis.stats computed; computes no
statistics and imports nothing from training."""

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

from fashionbn.analysis.markdown import group_label  # noqa: E402
from fashionbn.analysis.protocol import statistics_word  # noqa: E402


def facet_labels(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'optim.lr=0.01, batch_size=32' per row ('' when there are no keys; a key that
    does not apply to the row, null, is left out)."""
    if not keys:
        return pd.Series("", index=frame.index)
    return frame.apply(lambda row: group_label(row, keys), axis=1).astype(str)


def panels(
    frame: pd.DataFrame,
    facet_keys: list[str],
    width: float = 5.0,
    sharey: bool = True,
    ncols: int = 3,
) -> tuple[Figure, list[tuple[Axes, pd.DataFrame, str]]]:
    """A grid of axes, one per value of facet_keys (at most ncols columns, in the
    values' sorted order), with its rows. A row that lacks a key (null: a setting
    that does not apply to it, e.g. bn_momentum of the baseline) is drawn in every
    panel that agrees with its other keys."""
    sns.set_theme(style="whitegrid")
    labels = facet_labels(frame, facet_keys)
    complete = frame[facet_keys].notna().all(axis=1) if facet_keys else labels == ""
    names = sorted(labels[complete].unique()) or sorted(labels.unique())
    ncols = min(len(names), ncols)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(6.5, width * ncols), 4.5 * nrows),
        sharey=sharey, squeeze=False,
    )  # fmt: skip
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    drawn = []
    for ax, name in zip(axes.flat, names):
        panel = frame[labels == name].iloc[0]
        rows = pd.Series(True, index=frame.index)
        for key in facet_keys:
            same = frame[key].astype(str) == str(panel[key])
            rows &= frame[key].isna() | same if pd.notna(panel[key]) else same
        drawn.append((ax, frame[rows], name))
    return fig, drawn


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
        if name and not ax.get_title():
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


def accuracy_gap(
    intervals: pd.DataFrame, facet_keys: list[str], reference: str = "baseline"
) -> Figure:
    """Per-epoch test-accuracy gap vs the reference, mean with its 95 % t-interval."""
    fig, axes = panels(intervals, facet_keys)
    colors = _palette(intervals["comparison"])
    for ax, part, _ in axes:
        band_lines(ax, part, "epoch", "mean", "ci_low", "ci_high", "comparison", colors)
        ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = (
        f"Test accuracy gap vs {reference}, paired by seed\n"
        "line = mean, band = 95 % t-interval over seeds"
    )
    return _finish(fig, axes, title, "epoch", "test accuracy difference")


def log_scaled(key: str, values: pd.Series) -> bool:
    """Learning rates, and positive values spanning 10x or more, get a log axis."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or (numbers <= 0).any():
        return False
    return key.split(".")[-1] in ("lr", "eps") or numbers.max() >= 10 * numbers.min()


def tuning(
    grid: pd.DataFrame, tuned: list[str], by: str, last: pd.DataFrame | None = None
) -> Figure:
    """Mean validation metric (±1 std across seeds) against the first tuned key, a
    line per model; one panel per value of the other tuned keys. Where a setting's
    values are heavy-tailed (the grid's heavy_tailed), what the data is instead: the
    median, the interquartile range as the band, and each run of `last` as a dot."""
    x = tuned[0]
    robust = "heavy_tailed" in grid and bool(grid["heavy_tailed"].any())
    if robust:
        mean = f"{by}_median"
        frame = grid.assign(low=grid[f"{by}_q1"], high=grid[f"{by}_q3"])
    else:
        mean, std = f"{by}_mean", f"{by}_std"
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
        if robust and last is not None and not last.empty:
            keys = ["model", *tuned]
            seeds = last.assign(**{x: last[x] if numeric else last[x].astype(str)})
            seeds = seeds.merge(part[keys].drop_duplicates(), on=keys)
            for model, dots in seeds.groupby("model", sort=True):
                ax.scatter(dots[x], dots[by], s=12, color=colors[model], alpha=0.6,
                           zorder=3)  # fmt: skip
        if numeric and log_scaled(x, frame[x]):
            ax.set_xscale("log")
    n_min, n_max = int(grid["n"].min()), int(grid["n"].max())
    n = f"n={n_max}" if n_min == n_max else f"n={n_min}–{n_max}"
    shown = (
        "line = median, band = interquartile range, dots = each seed\n(heavy tails; "
        f"{n} runs per point)"
        if robust
        else f"line = mean, band = ±1 std across seeds ({n} runs per point)"
    )
    title = f"Validation: {by} at the last epoch against {x}\n{shown}"
    return _finish(fig, axes, title, x, by)


def profile(table: pd.DataFrame, group: str, metric: str, where: str) -> Figure:
    """A performance profile per `group` value (stats.performance_profile): the
    share of its runs at or above each value of `metric`, as a step line."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = _palette(table[group])
    for name, line in table.groupby(group, sort=True):
        line = line.sort_values("tau")
        ax.step(line["tau"], line["share"], where="post", color=colors[name],
                label=f"{name} (n={int(line['n'].iloc[0])})")  # fmt: skip
    ax.set_xlabel(f"{metric} τ")
    ax.set_ylabel(f"share of seeds with {metric} ≥ τ")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best")
    ax.set_title(f"Performance profile: {where}\neach seed counted, no mean taken")
    fig.tight_layout()
    return fig


def _diagnostic(summary: pd.DataFrame, keys: list[str], quantities, layers=None):
    """The summary rows of `quantities` (and `layers`) with a group label and band."""
    rows = summary[summary["quantity"].isin(quantities)]
    if layers is not None:
        rows = rows[rows["layer"].isin(layers)]
    return rows.assign(
        group=facet_labels(rows, keys),
        low=rows["mean"] - rows["std"].fillna(0),
        high=rows["mean"] + rows["std"].fillna(0),
    )


def _over_steps(axes: list, hue: str, colors: dict) -> None:
    """Lines over training steps with ±1 std bands, titled by their panel; a log y
    axis where every band is positive (the measures span orders of magnitude)."""
    for ax, part, _ in axes:
        band_lines(ax, part, "step", "mean", "low", "high", hue, colors)
        if (part["low"] > 0).all():
            ax.set_yscale("log")
        ax.set_title(part["panel"].iloc[0])


def layer_inputs(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """Ioffe & Szegedy's Figure 1(b, c): the 15th, 50th and 85th percentile of each
    group's last hidden layer's activation input (unit 0) over training, one panel per
    group (groups may differ in depth), mean across seeds with ±1 std bands."""
    names = {"act_in_p15": "15th", "act_in_p50": "50th", "act_in_p85": "85th"}
    frame = _diagnostic(summary, keys, list(names))
    frame = frame[frame["layer"] != "all"]
    deepest = frame.groupby("group")["layer"].transform(lambda x: x.astype(int).max())
    frame = frame[frame["layer"].astype(int) == deepest]
    frame = frame.assign(
        percentile=frame["quantity"].map(names),
        panel=frame["group"] + " · hidden layer " + frame["layer"],
    )
    fig, axes = panels(frame, ["panel"])
    colors = _palette(frame["percentile"])
    for ax, part, _ in axes:
        band_lines(ax, part, "step", "mean", "low", "high", "percentile", colors)
        ax.set_title(part["panel"].iloc[0])
    title = (
        "Input to the last hidden layer's activation, unit 0: percentiles over the "
        "probe batch\nline = mean, band = ±1 std across seeds"
    )
    return _finish(fig, axes, title, "training step", "activation input")


def gradients(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """Per-layer gradient norm over training (and internal covariate shift, when
    measured), one panel per group, a line per layer."""
    quantities = ["grad_norm", "ics_l2"]
    frame = _diagnostic(summary, keys, quantities)
    frame = frame[frame["layer"] != "all"]
    frame = frame.assign(
        panel=frame["group"] + " · " + frame["quantity"].map(
            {"grad_norm": "1: gradient norm", "ics_l2": "2: ICS ||G - G'||"}
        ),
        line="layer " + frame["layer"],
    )  # fmt: skip
    ncols = frame["quantity"].nunique()  # a row per group
    fig, axes = panels(frame, ["panel"], sharey=False, ncols=ncols)
    _over_steps(axes, "line", _palette(frame["line"]))
    for ax, _, _ in axes:
        ax.legend(loc="best")
    title = (
        "Gradients per hidden layer on the probe batch (log scale where the band is "
        "positive)\n"
        "line = mean, band = ±1 std across seeds"
    )
    return _finish(fig, axes, title, "training step", "norm")


def smoothness(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """Santurkar et al.'s landscape measures over training, a line per group."""
    names = {
        "loss_range": "loss range along -gradient",
        "grad_change": "gradient change (predictiveness)",
        "beta_smoothness": "effective beta-smoothness",
    }
    frame = _diagnostic(summary, keys, list(names), ["all"])
    frame = frame.assign(panel=frame["quantity"].map(names))
    fig, axes = panels(frame, ["panel"], sharey=False)
    _over_steps(axes, "group", _palette(frame["group"]))
    title = (
        "Loss landscape along the gradient, on the probe batch (log scale where the "
        "band is positive)\n"
        "line = mean, band = ±1 std across seeds"
    )
    return _finish(fig, axes, title, "training step", "value")


def png(fig: Figure) -> bytes:
    """`fig` as PNG bytes (the caller writes them); frees the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def robustness(table: pd.DataFrame) -> Figure:
    """A forest plot: one row per protocol cell (and comparison), the tuned gap's mean
    as a dot and its 95 % t-interval as a line, a zero line."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.45 * len(table)))
    comparisons = table["comparison"].unique()
    labels = []
    for y, (_, row) in enumerate(table.iloc[::-1].iterrows()):
        statistics = statistics_word(row["evaluation"])
        label = (
            f"drop_last={str(row['data.drop_last']).lower()} · {statistics} BN "
            f"stats · {int(row['budget'])} epochs"
        )
        labels.append(
            label if len(comparisons) == 1 else f"{row['comparison']} · {label}"
        )
        ax.plot([row["ci_low"], row["ci_high"]], [y, y], color="tab:blue", lw=2)
        ax.plot([row["mean"]], [y], "o", color="tab:blue")
    ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("tuned test-accuracy gap (each model at its own best setting)")
    what = comparisons[0] if len(comparisons) == 1 else "tuned gaps"
    fig.suptitle(
        f"Does the answer depend on the protocol? {what}\n"
        "dot = mean over seed pairs, line = 95 % t-interval (none for one pair)"
    )
    fig.tight_layout()
    return fig
