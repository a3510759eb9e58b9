"""The statistics against textbook values, closed forms, numerical integration, hand calculations and
scipy's tests on raw values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from research_portal.analytics import stats


def test_t_quantiles_match_the_tables():
    # Two-sided 95% critical values from any t table.
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 10: 2.2281, 30: 2.0423, 100: 1.9840}
    assert stats.t_critical(0.95, list(table)) == pytest.approx(list(table.values()), abs=1e-4)
    assert stats.t_critical(0.99, 4) == pytest.approx(4.6041, abs=1e-4)
    assert stats.t_critical(0.95, 1e8) == pytest.approx(1.959964, abs=1e-6)  # the normal's
    # df = 1 is the Cauchy distribution: t_{0.975} = tan(0.475 pi).
    assert stats.t_critical(0.95, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    # Undefined df give NaN, whatever their order or repetition (distinct values are computed once).
    got = stats.t_critical(0.95, [np.nan, 1, 2.5, 0, -1, 1, 2.5])
    assert np.isnan(got[[0, 3, 4]]).all()
    assert got[[1, 2, 5, 6]] == pytest.approx([12.7062, 3.5747, 12.7062, 3.5747], abs=1e-4)
    assert stats.t_critical(0.95, np.array([[1.0, 2.0], [3.0, np.nan]])).shape == (2, 2)


def t_pdf_reference(x: np.ndarray, df: float) -> np.ndarray:
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return norm * (1 + x * x / df) ** (-(df + 1) / 2)


def two_sided_p_by_integration(t: float, df: float) -> float:
    """P(|T| >= |t|) = 1 - 2 * integral_0^|t| pdf, by Simpson's rule on a fine grid."""
    grid = np.linspace(0.0, abs(t), 20_001)
    pdf = t_pdf_reference(grid, df)
    h = grid[1] - grid[0]
    return 1 - 2 * h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())


def estimate_of(values) -> stats.MeanEstimate:
    values = np.asarray(values, dtype=float)
    return stats.estimate_means([len(values)], [values.sum()], [(values * values).sum()])


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.5, 0.7, 0.6, 0.8], [0.2, 0.4, 0.3]),  # fractional df
        ([0.1, 0.3], [0.9, 0.4]),  # df = 2 (equal n and variance)
        ([0.41, 0.45, 0.39, 0.52, 0.47, 0.44], [0.40, 0.38, 0.46, 0.42, 0.41]),
        ([0.2, 0.25], [0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.8]),  # Welch df near its minimum, 1
    ],
)
def test_welch_p_values_equal_the_integrated_density(a, b):
    test = stats.welch_test(estimate_of(a), estimate_of(b))
    t, df = float(test.t[0]), float(test.df[0])
    assert test.p[0] == pytest.approx(two_sided_p_by_integration(t, df), abs=1e-9)
    assert stats.welch_test(estimate_of(b), estimate_of(a)).p[0] == pytest.approx(test.p[0])


def test_means_and_intervals_from_sufficient_statistics_equal_the_direct_computation():
    rng = np.random.default_rng(3)
    groups = [rng.uniform(0, 1, n) for n in (2, 5, 40)]
    estimate = stats.estimate_means(
        [len(g) for g in groups], [g.sum() for g in groups], [(g * g).sum() for g in groups]
    )
    for index, values in enumerate(groups):
        sd = values.std(ddof=1)
        half = float(stats.t_critical(0.95, len(values) - 1)) * sd / math.sqrt(len(values))
        assert estimate.mean[index] == pytest.approx(values.mean())
        assert estimate.sd[index] == pytest.approx(sd)
        assert (estimate.low[index], estimate.high[index]) == pytest.approx(
            (values.mean() - half, values.mean() + half)
        )
    lonely = stats.estimate_means([1, 0], [0.4, 0.0], [0.16, 0.0])
    assert lonely.mean[0] == pytest.approx(0.4) and np.isnan(lonely.low[0]) and np.isnan(lonely.mean[1])


def test_welch_test_by_hand():
    a, b = np.array([0.5, 0.7, 0.6, 0.8]), np.array([0.2, 0.4, 0.3])
    # Means 0.65 and 0.3, variances 1/60 and 0.01: se^2 = 1/240 + 1/300 = 0.0075.
    ea, eb = estimate_of(a), estimate_of(b)
    test = stats.welch_test(ea, eb)
    assert test.difference[0] == pytest.approx(0.35)
    assert test.t[0] == pytest.approx(0.35 / math.sqrt(0.0075))
    df = 0.0075**2 / ((1 / 240) ** 2 / 3 + (1 / 300) ** 2 / 2)
    assert test.df[0] == pytest.approx(df)
    assert test.p[0] == pytest.approx(two_sided_p_by_integration(0.35 / math.sqrt(0.0075), df), abs=1e-9)
    half = float(stats.t_critical(0.95, df)) * math.sqrt(0.0075)
    assert (test.low[0], test.high[0]) == pytest.approx((0.35 - half, 0.35 + half))
    # The same as scipy's Welch test on the raw values (which also reports df and the interval).
    raw = scipy_stats.ttest_ind(a, b, equal_var=False)
    interval = raw.confidence_interval(0.95)
    assert (test.t[0], test.p[0], test.df[0]) == pytest.approx((raw.statistic, raw.pvalue, raw.df))
    assert (test.low[0], test.high[0]) == pytest.approx((interval.low, interval.high))
    # A group of one cannot be tested; neither can two groups without variance.
    one = stats.welch_test(ea, stats.estimate_means([1], [0.2], [0.04]))
    flat = stats.welch_test(*(stats.estimate_means([3], [1.5], [0.75]) for _ in range(2)))
    assert np.isnan(one.p[0]) and np.isnan(one.t[0]) and np.isnan(one.low[0])
    assert one.difference[0] == pytest.approx(0.45)
    assert np.isnan(flat.p[0]) and np.isnan(flat.df[0])


def test_welch_test_per_second_is_elementwise():
    """Seconds side by side give what each gives alone; untestable seconds in between stay NaN."""
    pairs = [([0.5, 0.7, 0.6, 0.8], [0.2, 0.4, 0.3]), ([0.3], [0.1, 0.2]), ([0.1, 0.3], [0.9, 0.4])]

    def side(groups) -> stats.MeanEstimate:
        return stats.estimate_means(
            [len(g) for g in groups], [sum(g) for g in groups], [sum(v * v for v in g) for g in groups]
        )

    together = stats.welch_test(side([a for a, _b in pairs]), side([b for _a, b in pairs]))
    for second, (a, b) in enumerate(pairs):
        alone = stats.welch_test(estimate_of(a), estimate_of(b))
        for field in ("difference", "t", "df", "p", "low", "high"):
            assert getattr(together, field)[second] == pytest.approx(getattr(alone, field)[0], nan_ok=True)
    assert np.isnan(together.p[1]) and np.isfinite(together.p[[0, 2]]).all()


def test_multiple_comparison_corrections_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # BH: sorted 0.005, 0.01, 0.03, 0.04 -> x4/1, x4/2, x4/3, x4/4 = 0.02, 0.02, 0.04, 0.04 (monotone).
    assert stats.benjamini_hochberg(p)[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # Holm: x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06.
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(stats.benjamini_hochberg(p)[4]) and np.isnan(stats.holm(p)[4])
    assert stats.benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    assert np.isnan(stats.holm([np.nan])).all()
    # R's p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") and "BH".
    assert stats.holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert stats.benjamini_hochberg([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05] * 5)
    assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and stats.holm([0.7, 0.9]).max() == 1.0
    assert stats.benjamini_hochberg([]).shape == (0,) and stats.holm([]).shape == (0,)
