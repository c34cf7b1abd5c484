"""Statistics of the tidy results table: summaries across seeds, how sure we are of
paired gaps (fashionbn.analysis.pairing makes the pairs:
t and bootstrap intervals, probability
of improvement, Holm-corrected p-values, seeds needed), generalisation, epochs to reach
an accuracy. Pure functions of tables and numbers."""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fashionbn.jobs.files import SUMMARISED

METRICS = SUMMARISED  # named once, in fashionbn.core.records
LEVEL = 0.95  # every interval's confidence level
MIN_BOOTSTRAP_PAIRS = 8  # fewer pairs: a bootstrap interval is not worth reporting


ROBUST_LEVELS = ["test_acc", "val_acc"]  # levels also given as median and IQM


def summarize(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group and epoch: n, mean and std (across seeds) of every metric; then
    the median and the IQM of the accuracies (ROBUST_LEVELS), which a few
    collapsed seeds do not move."""
    grouped = results.groupby([*group_keys, "epoch"], dropna=False)
    summary = grouped[METRICS].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    for metric in ROBUST_LEVELS:
        summary[f"{metric}_median"] = grouped[metric].median()
        summary[f"{metric}_iqm"] = grouped[metric].agg(
            lambda values: iqm(values.dropna()) if values.notna().any() else math.nan
        )
    return summary.reset_index()


def last_epochs(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of each group's own last epoch (groups may have run different
    numbers of epochs)."""
    if not keys:
        return frame[frame["epoch"] == frame["epoch"].max()]
    last = frame.groupby(keys, dropna=False)["epoch"].transform("max")
    return frame[frame["epoch"] == last]


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of `values`: scipy's one-sample t-test, the
    call paired_p_value takes its p from (NaN, NaN for fewer than 2 values). Values
    without spread give the mean itself: scipy would warn of lost precision there,
    and the interval has no width."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    if no_spread(values):
        return float(values.mean()), float(values.mean())
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(level)
    return float(interval.low), float(interval.high)


def gap_intervals(gaps: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Mean gap with a 95 % t-interval over paired seeds, per comparison and epoch."""
    keys = ["comparison", *[k for k in group_keys if k != "model"], "epoch"]
    rows = []
    for key, part in gaps.groupby(keys, dropna=False):
        low, high = t_interval(part["gap"])
        rows.append({**dict(zip(keys, key)), "n": len(part),
                     "mean": part["gap"].mean(), "ci_low": low,
                     "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


def epochs_to_reach(
    results: pd.DataFrame, group_keys: list[str], threshold: float
) -> pd.DataFrame:
    """Per group: runs, how many reached test_acc >= threshold, mean first epoch."""
    first = results[results["test_acc"] >= threshold].groupby("run")["epoch"].min()
    runs = results.drop_duplicates("run").set_index("run")
    runs["first_epoch"] = first
    rows = []
    for key, part in runs.groupby(group_keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(group_keys, key)), "n": len(part),
                     "reached": int(part["first_epoch"].notna().sum()),
                     "mean_epoch": part["first_epoch"].mean()})  # fmt: skip
    return pd.DataFrame(rows)


def generalisation(results: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group at its own last epoch: n, mean and std across seeds of train_acc −
    test_acc (train_acc is the running accuracy of the epoch's training batches)."""
    last = last_epochs(results, ["run"])
    last = last.assign(gap=last["train_acc"] - last["test_acc"])
    grouped = last.groupby(group_keys, dropna=False)
    table = grouped.agg(
        epoch=("epoch", "max"), n=("gap", "size"), mean=("gap", "mean"),
        std=("gap", "std"),
    )  # fmt: skip
    return table.reset_index()


# --- how sure: statistics of paired gaps -------------------------------------------


# accuracies are fractions of a test set: differences below this are float noise
SPREAD_TOLERANCE = 1e-12


def no_spread(values: np.ndarray) -> bool:
    """All values equal (up to float noise from subtracting accuracies)."""
    return float(np.ptp(values)) <= SPREAD_TOLERANCE


def bootstrap_interval(
    values: Sequence[float], level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """BCa bootstrap interval of the mean (9,999 resamples, fixed random state)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    if no_spread(values):  # every resample has the same mean
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,), np.mean, method="BCa", confidence_level=level,
        n_resamples=9_999, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def iqm(values: Sequence[float]) -> float:
    """The interquartile mean: the mean of the middle half, a quarter of the values
    cut from each end (scipy's trim_mean at 0.25, as rliable computes it)."""
    values = np.asarray(values, dtype=float)
    return float(stats.trim_mean(values, 0.25)) if len(values) else math.nan


def percentile_interval(
    values: Sequence[float],
    statistic: str,
    level: float = LEVEL,
    seed: int = 0,
    resamples: int = 9_999,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the `statistic` ("median" or "iqm") of
    `values`: `resamples` resamples of the seeds with replacement, drawn as
    default_rng(seed).integers(0, n, (resamples, n)) from the values sorted (so the
    interval does not depend on the order the runs were read in), and the
    statistic's (1 - level) / 2 and (1 + level) / 2 quantiles over them (linear)."""
    values = np.sort(np.asarray(values, dtype=float))
    if len(values) < 2:
        return math.nan, math.nan
    if no_spread(values):
        return float(values[0]), float(values[0])
    draws = values[
        np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    ]
    if statistic == "median":
        spread = np.median(draws, axis=1)
    else:
        spread = stats.trim_mean(draws, 0.25, axis=1)
    low, high = np.quantile(spread, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# a distribution is heavy-tailed here beyond either mark: the excess kurtosis of a
# Laplace distribution, or one value past Tukey's far-out fence (3 IQR beyond a
# quartile: a collapsed seed among a few)
HEAVY_KURTOSIS = 3.0
FAR_OUT_IQRS = 3.0
MIN_TAIL_VALUES = 4  # fewer: neither kurtosis nor quartiles say anything


def tails(values: Sequence[float]) -> dict:
    """How heavy `values`' tails are: excess kurtosis (unbiased; NaN for fewer than
    4 values or no spread), the values beyond the far-out fences, the robust
    standard deviation (IQR / 1.349, a normal distribution's std), and whether
    either mark of a heavy tail is passed."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_TAIL_VALUES:
        return {"kurtosis": math.nan, "far_out": 0, "robust_sd": math.nan,
                "heavy_tailed": False}  # fmt: skip
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    far = int(np.sum((values < q1 - FAR_OUT_IQRS * iqr)
                     | (values > q3 + FAR_OUT_IQRS * iqr)))  # fmt: skip
    kurtosis = (
        math.nan if no_spread(values)
        else float(stats.kurtosis(values, fisher=True, bias=False))
    )  # fmt: skip
    heavy = far > 0 or (math.isfinite(kurtosis) and kurtosis > HEAVY_KURTOSIS)
    return {"kurtosis": kurtosis, "far_out": far, "robust_sd": float(iqr / 1.349),
            "heavy_tailed": bool(heavy)}  # fmt: skip


def performance_profile(
    runs: pd.DataFrame, group: str, metric: str = "test_acc"
) -> pd.DataFrame:
    """rliable's performance profile of each `group` value: at every value τ of
    `metric` any of the runs reached, the share of that group's runs whose `metric`
    is at least τ (one row per group and τ: group, tau, share, n)."""
    taus = np.unique(runs[metric].dropna().to_numpy(dtype=float))
    rows = []
    for name, part in runs.groupby(group, sort=True):
        values = part[metric].dropna().to_numpy(dtype=float)
        for tau in taus:
            rows.append({group: name, "tau": float(tau), "n": len(values),
                         "share": float(np.mean(values >= tau))})  # fmt: skip
    return pd.DataFrame(rows, columns=[group, "tau", "n", "share"])


def signs_differ(a: float, b: float) -> bool:
    """Whether two estimates of a gap point different ways (neither zero)."""
    tol = SPREAD_TOLERANCE
    return (a > tol and b < -tol) or (a < -tol and b > tol)


def probability_of_improvement(gaps: Sequence[float]) -> float:
    """Share of seed pairs in which the model beats the baseline, ties counting half
    (rliable's P(X > Y), over matched seed pairs instead of all pairs)."""
    gaps = np.asarray(gaps, dtype=float)
    if not len(gaps):
        return math.nan
    ties = np.abs(gaps) <= SPREAD_TOLERANCE
    return float(np.mean((gaps > SPREAD_TOLERANCE) + 0.5 * ties))


def wilson_interval(share: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion `share` observed over n trials."""
    if n < 1 or not math.isfinite(share):
        return math.nan, math.nan
    z = stats.norm.ppf(0.5 + level / 2)
    centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(share * (1 - share) / n + z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_p_value(gaps: Sequence[float]) -> tuple[float, str]:
    """Two-sided p-value of mean gap = 0 and the test that gave it: the paired t-test
    ("t"), or, when every gap is the same, the exact sign-flip permutation test
    ("sign-flip"), since t is undefined without spread and zero spread is not
    certainty: with n equal non-zero gaps only the two all-same-sign flips are as
    extreme, p = 2 / 2^n (0.5 for two pairs). NaN for fewer than 2 pairs."""
    gaps = np.asarray(gaps, dtype=float)
    if len(gaps) < 2:
        return math.nan, "t"
    if no_spread(gaps):
        if abs(gaps[0]) <= SPREAD_TOLERANCE:
            return 1.0, "sign-flip"
        return 2.0 / 2 ** len(gaps), "sign-flip"
    return float(stats.ttest_1samp(gaps, 0.0).pvalue), "t"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaNs are left out of the family)."""
    finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running, m = 0.0, len(finite)
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def seeds_needed(std: float, precision: float, level: float = LEVEL) -> float:
    """Seed pairs the spread `std` of the gap needs for the t-interval's half-width
    t(n-1) * std / sqrt(n) to be at most `precision` (NaN beyond 100,000)."""
    if not math.isfinite(std):
        return math.nan
    for n in range(2, 100_001):
        if stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n) <= precision:
            return n
    return math.nan


def compare(gaps: Sequence[float], precision: float) -> dict:
    """Everything the report says about one paired comparison's gaps."""
    gaps = np.asarray(gaps, dtype=float)
    n = len(gaps)
    low, high = t_interval(gaps)
    boot = (
        bootstrap_interval(gaps) if n >= MIN_BOOTSTRAP_PAIRS else (math.nan, math.nan)
    )
    share = probability_of_improvement(gaps)
    share_low, share_high = wilson_interval(share, n)
    std = float(np.std(gaps, ddof=1)) if n > 1 else math.nan
    p_value, p_test = paired_p_value(gaps)
    robust = {}
    for name, value in (("median", float(np.median(gaps)) if n else math.nan),
                        ("iqm", iqm(gaps))):  # fmt: skip
        interval = (
            percentile_interval(gaps, name)
            if n >= MIN_BOOTSTRAP_PAIRS else (math.nan, math.nan)
        )  # fmt: skip
        robust.update({name: value, f"{name}_low": interval[0],
                       f"{name}_high": interval[1]})  # fmt: skip
    tail = tails(gaps)
    mean = float(np.mean(gaps)) if n else math.nan
    return {
        "n": n, "mean": mean, "ci_low": low, "ci_high": high,
        "boot_low": boot[0], "boot_high": boot[1], "p_improve": share,
        "p_improve_low": share_low, "p_improve_high": share_high,
        "p_value": p_value, "p_test": p_test,
        "seeds_needed": seeds_needed(std, precision), **robust, **tail,
        "signs_differ": signs_differ(mean, robust["iqm"]),
        "seeds_needed_robust": seeds_needed(tail["robust_sd"], precision),
    }  # fmt: skip


def comparisons(
    gaps: pd.DataFrame, group_keys: list[str], precision: float
) -> pd.DataFrame:
    """compare() at epoch 1 and at the last epoch of every comparison (and value of
    the other group keys), as the report states them
    (fashionbn.analysis.pairing.paired_gaps makes the gaps)."""
    facet_keys = [k for k in group_keys if k != "model"]
    rows = []
    if gaps.empty:
        return pd.DataFrame()
    for key, part in gaps.groupby(["comparison", *facet_keys], dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for epoch in sorted({1, int(part["epoch"].max())}):
            at = part[part["epoch"] == epoch]["gap"]
            if at.empty:
                continue
            rows.append({"comparison": key[0], **dict(zip(facet_keys, key[1:])),
                         "epoch": epoch, "epoch_reference": epoch,
                         **compare(at, precision)})  # fmt: skip
    return pd.DataFrame(rows)


def tuned_comparisons(gaps: pd.DataFrame, precision: float, label: str):
    """compare() of each model at its chosen setting against the reference at its own
    (fashionbn.analysis.pairing.tuned_gaps), each side at the epoch its selection
    used."""
    rows = []
    for comparison, part in [] if gaps.empty else gaps.groupby("comparison"):
        rows.append({"comparison": comparison + label,
                     "epoch": int(part["epoch"].iloc[0]),
                     "epoch_reference": int(part["epoch_reference"].iloc[0]),
                     **compare(part["gap"], precision)})  # fmt: skip
    return pd.DataFrame(rows)


def with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with p_holm: its p-values corrected as one family (the report's)."""
    if table.empty:
        return table
    return table.assign(p_holm=holm(table["p_value"].tolist()))
