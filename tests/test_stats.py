"""The report's statistics against independent computations on hand-made numbers."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from fashionbn.analysis.stats import (
    bootstrap_interval,
    compare,
    comparisons,
    generalisation,
    holm,
    iqm,
    paired_p_value,
    percentile_interval,
    probability_of_improvement,
    seeds_needed,
    t_interval,
    tails,
    wilson_interval,
)
from tests.conftest import T_975  # Student t quantiles 0.975 from a printed table


def test_t_interval_by_hand() -> None:
    gaps = pd.Series([0.1, 0.2, 0.3])  # mean 0.2, sample std 0.1
    half = T_975[2] * 0.1 / math.sqrt(3)
    assert t_interval(gaps) == pytest.approx((0.2 - half, 0.2 + half))
    assert all(math.isnan(x) for x in t_interval(pd.Series([0.5])))


def test_paired_p_value_closed_form_for_two_degrees_of_freedom() -> None:
    """For df = 2 the t distribution's cdf is 1/2 + t / (2 sqrt(2 + t^2)), so the
    two-sided p-value is 1 - t / sqrt(2 + t^2)."""
    t = 0.2 / (0.1 / math.sqrt(3))
    p, test = paired_p_value([0.1, 0.2, 0.3])
    assert p == pytest.approx(1 - t / math.sqrt(2 + t**2)) and test == "t"
    assert paired_p_value([-0.1, -0.2, -0.3])[0] == pytest.approx(
        1 - t / math.sqrt(2 + t**2)
    )
    assert math.isnan(paired_p_value([0.3])[0])


@pytest.mark.parametrize(
    "gaps, expected",
    [([0.1, 0.1], 0.5), ([0.6 - 0.5, 0.2 - 0.1], 0.5), ([-0.02] * 3, 0.25),
     ([0.1] * 5, 2 / 32), ([0.0, 0.0], 1.0)],
)  # fmt: skip
def test_equal_gaps_get_the_exact_sign_flip_p_value(gaps, expected) -> None:
    """Zero spread is not certainty: of the 2^n sign flips of n equal gaps, the two
    with all signs alike are as extreme as the data, so p = 2 / 2^n (never 0)."""
    assert paired_p_value(gaps) == (pytest.approx(expected), "sign-flip")
    row = compare(gaps, precision=0.01)
    assert row["p_value"] == pytest.approx(expected) and row["p_test"] == "sign-flip"


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(prev, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([math.nan, 0.02, 0.04])  # NaN is not part of the family
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.04])


def test_probability_of_improvement_counts_ties_half() -> None:
    assert probability_of_improvement([0.1, -0.2, 0.0, 0.3]) == pytest.approx(0.625)
    assert probability_of_improvement([0.6 - 0.5, 0.2 - 0.1]) == 1.0
    assert probability_of_improvement([0.3 - 0.1 - 0.2]) == 0.5  # float-noise tie


def test_wilson_interval_by_hand() -> None:
    # 3 successes in 3: the textbook Wilson lower bound 0.4385
    z = 1.959963984540054
    centre = (1 + z**2 / 6) / (1 + z**2 / 3)
    half = z / (1 + z**2 / 3) * math.sqrt(z**2 / 36)
    low, high = wilson_interval(1.0, 3)
    assert low == pytest.approx(centre - half) and low == pytest.approx(
        0.4385, abs=1e-4
    )
    assert high == 1.0
    # 5 of 10: symmetric around 0.5
    low, high = wilson_interval(0.5, 10)
    assert low + high == pytest.approx(1.0)
    assert low == pytest.approx(0.2366, abs=1e-4)


def test_seeds_needed_by_hand() -> None:
    # std 0.02, ±0.01: n=17 gives 2.1199 * 0.02 / sqrt(17) = 0.01028 > 0.01,
    # n=18 gives 2.1098 * 0.02 / sqrt(18) = 0.00995
    assert T_975[16] * 0.02 / math.sqrt(17) > 0.01 >= T_975[17] * 0.02 / math.sqrt(18)
    assert seeds_needed(0.02, 0.01) == 18
    assert seeds_needed(0.0, 0.01) == 2
    assert math.isnan(seeds_needed(math.nan, 0.01))


def bca_by_hand(values: np.ndarray, resamples: int, seed: int) -> tuple:
    """Efron's BCa interval of the mean, written out with numpy."""
    rng = np.random.default_rng(seed)
    n, theta = len(values), values.mean()
    means = values[rng.integers(0, n, (resamples, n))].mean(axis=1)
    z0 = norm.ppf(np.mean(means < theta))
    jack = np.array([np.delete(values, i).mean() for i in range(n)])
    d = jack.mean() - jack
    a = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    levels = []
    for z in (norm.ppf(0.025), norm.ppf(0.975)):
        levels.append(norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    return tuple(np.quantile(means, levels))


def test_bootstrap_interval_matches_a_hand_written_bca() -> None:
    gaps = np.array([0.21, 0.18, 0.25, 0.19, 0.30, 0.17, 0.22, 0.35, 0.20, 0.16])
    low, high = bootstrap_interval(gaps)
    hand_low, hand_high = bca_by_hand(gaps, 200_000, seed=1)
    assert low == pytest.approx(hand_low, abs=0.003)
    assert high == pytest.approx(hand_high, abs=0.003)
    assert low < gaps.mean() < high
    assert bootstrap_interval(gaps) == (low, high)  # fixed random state
    assert bootstrap_interval([0.1] * 8) == (0.1, 0.1)


def test_compare_gives_bootstrap_from_eight_pairs_on() -> None:
    few = compare([0.1, 0.2, 0.3], precision=0.01)
    assert few["n"] == 3 and few["mean"] == pytest.approx(0.2)
    assert math.isnan(few["boot_low"]) and math.isnan(few["boot_high"])
    assert few["p_improve"] == 1.0
    assert few["seeds_needed"] == seeds_needed(0.1, 0.01)
    eight = compare([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2], precision=0.01)
    assert eight["boot_low"] < eight["mean"] < eight["boot_high"]


def test_comparisons_at_epoch_one_and_the_last() -> None:
    gaps = pd.DataFrame(
        {"comparison": "batchnorm − baseline", "seed": [0, 1, 2] * 3,
         "epoch": [1] * 3 + [2] * 3 + [3] * 3,
         "gap": [0.5, 0.4, 0.6, 0.3, 0.3, 0.3, 0.1, 0.2, 0.3]}
    )  # fmt: skip
    table = comparisons(gaps, ["model"], precision=0.01)
    assert table["epoch"].tolist() == [1, 3]
    assert table["mean"].tolist() == pytest.approx([0.5, 0.2])


def test_generalisation_is_train_minus_test_at_the_last_epoch() -> None:
    results = pd.DataFrame(
        {"run": ["a", "a", "b", "b"], "model": "baseline", "epoch": [1, 2, 1, 2],
         "train_acc": [0.5, 0.80, 0.5, 0.70], "test_acc": [0.4, 0.75, 0.4, 0.71]}
    )  # fmt: skip
    table = generalisation(results, ["model"])
    row = table.iloc[0]
    assert (row["epoch"], row["n"]) == (2, 2)
    assert row["mean"] == pytest.approx(np.mean([0.05, -0.01]))
    assert row["std"] == pytest.approx(np.std([0.05, -0.01], ddof=1))


def test_t_interval_of_gaps_without_spread_is_the_gap_itself() -> None:
    """scipy's interval is undefined (it warns of lost precision) when every gap is
    the same: the interval is the mean, with no width."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "precision loss" warning in a report
        assert t_interval(pd.Series([0.02, 0.02, 0.02])) == (0.02, 0.02)


# --- robust statistics -------------------------------------------------------------


def test_iqm_is_the_mean_of_the_middle_half_by_hand() -> None:
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == (3 + 4 + 5 + 6) / 4  # 2 cut each end
    # 10 values: int(2.5) = 2 cut from each end, the middle 6 averaged
    ten = [0.9, 0.1, 0.5, 0.5, 0.6, 0.4, 0.7, 0.3, 0.8, 0.2]
    assert iqm(ten) == pytest.approx((0.3 + 0.4 + 0.5 + 0.5 + 0.6 + 0.7) / 6)
    assert iqm([0.84, 0.85, 0.86, 0.10]) == pytest.approx((0.84 + 0.85) / 2)
    assert math.isnan(iqm([]))


def test_percentile_interval_of_the_median_by_enumeration() -> None:
    """Three seeds 0, 1, 10: of the 27 equally likely resamples, 7 have median 0
    and 7 median 10, so the 2.5 % and 97.5 % quantiles are 0 and 10."""
    assert percentile_interval([0.0, 1.0, 10.0], "median") == (0.0, 10.0)
    # nine seeds: by hand with numpy, the documented draw
    values = np.array([0.80, 0.81, 0.83, 0.84, 0.84, 0.85, 0.86, 0.87, 0.40])
    ordered = np.array([0.40, 0.80, 0.81, 0.83, 0.84, 0.84, 0.85, 0.86, 0.87])
    draws = ordered[np.random.default_rng(0).integers(0, 9, (9_999, 9))]
    medians = np.sort(draws, axis=1)[:, 4]
    middle = np.sort(draws, axis=1)[:, 2:7].mean(axis=1)  # int(9/4) = 2 cut each end
    expected = {"median": medians, "iqm": middle}
    for statistic, spread in expected.items():
        low, high = percentile_interval(values, statistic)
        assert (low, high) == pytest.approx(tuple(np.quantile(spread, [0.025, 0.975])))
        assert percentile_interval(values, statistic) == (low, high)  # fixed state
        assert percentile_interval(values[::-1], statistic) == (low, high)  # order
        assert low <= np.median(values) <= high
    assert percentile_interval([0.2] * 5, "iqm") == (0.2, 0.2)
    assert all(math.isnan(v) for v in percentile_interval([0.2], "median"))


def excess_kurtosis_by_hand(values: np.ndarray) -> float:
    """The unbiased estimator G2 from the sample moments."""
    n = len(values)
    d = values - values.mean()
    m2, m4 = (d**2).mean(), (d**4).mean()
    g2 = m4 / m2**2 - 3
    return ((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3))


def test_tails_by_hand() -> None:
    calm = np.array([0.010, 0.012, 0.008, 0.011, 0.009, 0.013, 0.007, 0.010])
    got = tails(calm)
    assert got["kurtosis"] == pytest.approx(excess_kurtosis_by_hand(calm))
    assert got["far_out"] == 0 and not got["heavy_tailed"]
    # quartiles by linear interpolation: positions 1.75 and 5.25 of the sorted 8
    ordered = np.sort(calm)
    q1 = ordered[1] + 0.75 * (ordered[2] - ordered[1])
    q3 = ordered[5] + 0.25 * (ordered[6] - ordered[5])
    assert got["robust_sd"] == pytest.approx((q3 - q1) / 1.349)
    # one collapsed seed among nine: past the far-out fence, heavy
    collapsed = np.array([0.84, 0.85, 0.83, 0.84, 0.86, 0.85, 0.84, 0.83, 0.41])
    got = tails(collapsed)
    assert got["far_out"] == 1 and got["heavy_tailed"]
    assert got["kurtosis"] == pytest.approx(excess_kurtosis_by_hand(collapsed))
    assert got["kurtosis"] > 3
    assert not tails([0.1, 0.5, 0.9])["heavy_tailed"]  # too few to judge
    assert math.isnan(tails([0.1, 0.5, 0.9])["kurtosis"])


def test_a_planted_heavy_tail_where_mean_and_iqm_disagree() -> None:
    """Eight pairs where the model is ahead by about 0.01, two collapsed seeds at
    −0.2 and −0.25: the mean says behind, the IQM and the median say ahead."""
    gaps = [0.010, 0.012, 0.008, 0.011, 0.009, 0.013, 0.007, 0.010, -0.20, -0.25]
    got = compare(gaps, precision=0.005)
    assert got["mean"] == pytest.approx(sum(gaps) / 10)
    assert got["mean"] < 0
    middle = sorted(gaps)[2:8]  # int(10 / 4) = 2 cut from each end
    assert got["iqm"] == pytest.approx(sum(middle) / 6) and got["iqm"] > 0
    # sorted: −0.25, −0.20, 0.007, 0.008, 0.009 | 0.010, 0.010, 0.011, 0.012, 0.013
    assert got["median"] == pytest.approx((0.009 + 0.010) / 2)
    assert got["signs_differ"] and got["heavy_tailed"] and got["far_out"] == 2
    assert got["iqm_low"] <= got["iqm"] <= got["iqm_high"]
    assert got["median_low"] <= got["median"] <= got["median_high"]
    assert got["ci_low"] < 0 < got["ci_high"]  # the mean's interval is not
    assert got["seeds_needed_robust"] < got["seeds_needed"]
    calm = compare(gaps[:8], precision=0.005)
    assert not calm["signs_differ"] and not calm["heavy_tailed"]
