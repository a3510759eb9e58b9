"""Statistics with participants as the unit: means, t-based confidence intervals, Welch's t-test and
corrections for testing many seconds at once.

Every function works on whole arrays (one element per second of the ad) with one scipy call each, never a
Python loop over the elements: a dashboard request runs them for every measure and country. Elements that
cannot be computed (too few participants, no variance) are NaN and stay out of the corrections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


def _as_float(value) -> np.ndarray:
    return np.asarray(value, dtype=float)


def t_critical(confidence: float, df) -> np.ndarray:
    """Two-sided critical value t_{(1+confidence)/2, df}, elementwise; NaN where df <= 0 or NaN."""
    df = _as_float(df)
    # The quantile is the costly part (~1 ms for 600 elements) and per-second df are participant counts
    # minus one, so a trace has few distinct values: compute each once.
    distinct, index = np.unique(df, return_inverse=True)
    critical = np.asarray(scipy_stats.t.ppf((1.0 + confidence) / 2.0, distinct), dtype=float)
    return critical[index].reshape(df.shape)


@dataclass(frozen=True)
class MeanEstimate:
    """Per-element mean across participants with its t-based confidence interval (NaN where undefined)."""

    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        return self.sd**2


def estimate_means(n, total, total_squares, confidence: float = 0.95) -> MeanEstimate:
    """Mean and CI from sufficient statistics of participant values: count, sum and sum of squares.

    The CI needs n >= 2 (NaN otherwise): mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)."""
    n = _as_float(n)
    total, total_squares = _as_float(total), _as_float(total_squares)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        # Sums of squares kept incrementally can dip a hair below the exact value; clip at zero.
        variance = np.where(n > 1, np.maximum(total_squares - total * total / n, 0.0) / (n - 1), np.nan)
        sd = np.sqrt(variance)
        se = sd / np.sqrt(n)
    half = t_critical(confidence, np.where(n > 1, n - 1, np.nan)) * se
    return MeanEstimate(n=n, mean=mean, sd=sd, se=se, low=mean - half, high=mean + half)


@dataclass(frozen=True)
class WelchTest:
    """Per-element Welch t-test of mean_a - mean_b (NaN where a group has n < 2 or both have no variance)."""

    difference: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    low: np.ndarray
    high: np.ndarray


def welch_test(a: MeanEstimate, b: MeanEstimate, confidence: float = 0.95) -> WelchTest:
    """t and p from scipy's Welch test on the summary statistics; the Welch-Satterthwaite df beside them
    because scipy's result from summary statistics does not carry it, and the difference's CI needs it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        va, vb = a.variance / a.n, b.variance / b.n
        se2 = va + vb
        testable = (a.n >= 2) & (b.n >= 2) & (se2 > 0)
        difference = np.where((a.n >= 1) & (b.n >= 1), a.mean - b.mean, np.nan)
        df = np.where(testable, se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1)), np.nan)
        result = scipy_stats.ttest_ind_from_stats(a.mean, a.sd, a.n, b.mean, b.sd, b.n, equal_var=False)
    # scipy answers t = 0, p = 1 for groups it cannot test (n < 2): those stay NaN here.
    t = np.where(testable, result.statistic, np.nan)
    p = np.where(testable, result.pvalue, np.nan)
    half = t_critical(confidence, df) * np.sqrt(se2)
    return WelchTest(difference=difference, t=t, df=df, p=p, low=difference - half, high=difference + half)


@dataclass(frozen=True)
class OneSampleTest:
    """Per-element one-sample t-test of mean - reference (NaN where n < 2 or there is no variance)."""

    difference: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray


def one_sample_test(estimate: MeanEstimate, reference: float) -> OneSampleTest:
    """t = (mean - reference) / (sd / sqrt(n)) on n - 1 df, two-sided p from scipy's t distribution. The
    reference is taken as a known constant; elements that cannot be tested (n < 2, zero variance, as in
    welch_test) are NaN and so stay out of a correction."""
    with np.errstate(divide="ignore", invalid="ignore"):
        testable = (estimate.n >= 2) & (estimate.se > 0)
        difference = estimate.mean - reference
        t = np.where(testable, difference / estimate.se, np.nan)
        df = np.where(testable, estimate.n - 1, np.nan)
    p = np.asarray(2.0 * scipy_stats.t.sf(np.abs(t), df), dtype=float)  # NaN in, NaN out
    return OneSampleTest(difference=difference, t=t, df=df, p=p)


def _adjust_tested(p, adjust: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`adjust` applied to the finite entries only: NaN entries were not tested and stay NaN."""
    p = _as_float(p)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = adjust(p[tested])
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """BH-adjusted p-values (q-values, controlling the false discovery rate) over the finite entries."""
    return _adjust_tested(p, lambda values: scipy_stats.false_discovery_control(values, method="bh"))


def _holm_step_down(values: np.ndarray) -> np.ndarray:
    # Sorted ascending, the i-th smallest (from 0) is scaled by m - i; a running maximum keeps them ordered.
    m = values.size
    order = np.argsort(values, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(values[order] * (m - np.arange(m))), 1.0)
    result = np.empty(m)
    result[order] = adjusted
    return result


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values (controlling the family-wise error rate) over the finite entries."""
    return _adjust_tested(p, _holm_step_down)


CORRECTIONS = {"bh": benjamini_hochberg, "holm": holm}
