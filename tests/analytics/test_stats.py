"""The numpy statistics against textbook values, closed forms, numerical integration and hand calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research_portal.analytics import stats


def test_t_quantiles_match_the_tables():
    # Two-sided 95% critical values from any t table.
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 10: 2.2281, 30: 2.0423, 100: 1.9840}
    got = stats.t_ppf(0.975, list(table))
    assert got == pytest.approx(list(table.values()), abs=1e-4)
    assert stats.t_ppf(0.025, 10) == pytest.approx(-2.2281, abs=1e-4)
    assert stats.t_ppf(0.995, 4) == pytest.approx(4.6041, abs=1e-4)
    assert stats.t_ppf(0.975, 1e8) == pytest.approx(1.959964, abs=1e-6)
    assert np.isnan(stats.t_ppf(0.975, 0.5)) and np.isnan(stats.t_ppf(1.0, 5))
    assert stats.t_critical(0.95, [np.nan, 1, 2.5])[1:] == pytest.approx(
        [12.7062, float(stats.t_ppf(0.975, 2.5))], 1e-4
    )


def t_pdf_reference(x: np.ndarray, df: float) -> np.ndarray:
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return norm * (1 + x * x / df) ** (-(df + 1) / 2)


@pytest.mark.parametrize("t, df", [(2.0, 10), (1.0, 5), (3.0, 2.5), (0.3, 40), (2.5, 7.3), (4.0, 1.0)])
def test_two_sided_p_values_equal_the_integrated_density(t, df):
    # P(|T| >= t) = 1 - 2 * integral_0^t pdf, by Simpson's rule on a fine grid.
    grid = np.linspace(0.0, t, 20_001)
    pdf = t_pdf_reference(grid, df)
    h = grid[1] - grid[0]
    integral = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    assert stats.t_two_sided_p(t, df) == pytest.approx(1 - 2 * integral, abs=1e-9)
    assert stats.t_two_sided_p(-t, df) == pytest.approx(stats.t_two_sided_p(t, df))


def test_closed_forms_of_the_incomplete_beta_and_the_cauchy_case():
    x = np.array([0.1, 0.5, 0.9])
    assert stats.betainc(1, 1, x) == pytest.approx(x)
    assert stats.betainc(3.5, 1, x) == pytest.approx(x**3.5)
    assert stats.betainc(2.5, 4.0, x) == pytest.approx(1 - stats.betainc(4.0, 2.5, 1 - x))
    # df = 1 is the Cauchy distribution: P(|T| >= t) = 1 - 2 atan(t) / pi.
    assert stats.t_two_sided_p(2.0, 1) == pytest.approx(1 - 2 * math.atan(2.0) / math.pi)
    assert stats.normal_ppf([0.975, 0.5, 0.001]) == pytest.approx([1.959964, 0.0, -3.090232], abs=1e-6)


def test_means_and_intervals_from_sufficient_statistics_equal_the_direct_computation():
    rng = np.random.default_rng(3)
    groups = [rng.uniform(0, 1, n) for n in (2, 5, 40)]
    estimate = stats.estimate_means(
        [len(g) for g in groups], [g.sum() for g in groups], [(g * g).sum() for g in groups]
    )
    for index, values in enumerate(groups):
        sd = values.std(ddof=1)
        half = stats.t_ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
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
    ea = stats.estimate_means([4], [a.sum()], [(a * a).sum()])
    eb = stats.estimate_means([3], [b.sum()], [(b * b).sum()])
    test = stats.welch_test(ea, eb)
    assert test.difference[0] == pytest.approx(0.35)
    assert test.t[0] == pytest.approx(0.35 / math.sqrt(0.0075))
    df = 0.0075**2 / ((1 / 240) ** 2 / 3 + (1 / 300) ** 2 / 2)
    assert test.df[0] == pytest.approx(df)
    assert test.p[0] == pytest.approx(stats.t_two_sided_p(0.35 / math.sqrt(0.0075), df))
    half = stats.t_ppf(0.975, df) * math.sqrt(0.0075)
    assert (test.low[0], test.high[0]) == pytest.approx((0.35 - half, 0.35 + half))
    # A group of one cannot be tested; neither can two groups without variance.
    one = stats.welch_test(ea, stats.estimate_means([1], [0.2], [0.04]))
    flat = stats.welch_test(*(stats.estimate_means([3], [1.5], [0.75]) for _ in range(2)))
    assert np.isnan(one.p[0]) and np.isnan(flat.p[0])


def test_multiple_comparison_corrections_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # BH: sorted 0.005, 0.01, 0.03, 0.04 -> x4/1, x4/2, x4/3, x4/4 = 0.02, 0.02, 0.04, 0.04 (monotone).
    assert stats.benjamini_hochberg(p)[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # Holm: x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06.
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(stats.benjamini_hochberg(p)[4]) and np.isnan(stats.holm(p)[4])
    assert stats.benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    assert np.isnan(stats.holm([np.nan])).all()
