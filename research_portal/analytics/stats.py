"""Statistics with participants as the unit: means, t-based confidence intervals, Welch's t-test and
corrections for testing many seconds at once.

numpy only (scipy is not a dependency): Student's t distribution comes from the regularized incomplete beta
function, evaluated elementwise with a vectorised continued fraction (Numerical Recipes' betacf, Lentz's
method); quantiles by a bracketed Newton iteration on that CDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TINY = 1e-300
# Relative precision of the continued fraction: its rounding floor is ~1e-14 for a ~ 1e5.
_EPS = 1e-13
_MAX_ITERATIONS = 5_000
# Beyond this many degrees of freedom the t distribution equals the normal to better than 1e-7.
_NORMAL_DF = 1e7

_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def _as_float(value) -> np.ndarray:
    return np.asarray(value, dtype=float)


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Continued fraction of the incomplete beta function, elementwise; converges for x < (a+1)/(a+b+2).
    Elements stop iterating once converged, so one slow element does not cost the others."""
    result = np.empty_like(x)
    active = np.arange(x.size)
    a, b, x = a.ravel(), b.ravel(), x.ravel()
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    for m in range(1, _MAX_ITERATIONS + 1):
        m2 = 2.0 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            step = d * c
            h = h * step
        done = ~(np.abs(step - 1.0) >= _EPS)  # NaN counts as done: it will not improve
        if done.any():
            result.flat[active[done]] = h[done]
            keep = ~done
            active, a, b, x, qab, qap, qam, c, d, h = (
                v[keep] for v in (active, a, b, x, qab, qap, qam, c, d, h)
            )
            if active.size == 0:
                break
    result.flat[active] = h
    return result


def betainc(a, b, x) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b), elementwise; NaN outside a, b > 0, 0 <= x <= 1."""
    a, b, x = np.broadcast_arrays(_as_float(a), _as_float(b), _as_float(x))
    out = np.full(a.shape, np.nan)
    valid = (a > 0) & (b > 0) & (x >= 0) & (x <= 1)
    out[valid & (x == 0)] = 0.0
    out[valid & (x == 1)] = 1.0
    inner = valid & (x > 0) & (x < 1)
    if not inner.any():
        return out
    a, b, x = a[inner], b[inner], x[inner]
    # The fraction converges fast on one side only; use I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    swap = x > (a + 1.0) / (a + b + 2.0)
    aa, bb, xx = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, 1.0 - x, x)
    log_front = (
        _lgamma(aa + bb).astype(float)
        - _lgamma(aa).astype(float)
        - _lgamma(bb).astype(float)
        + aa * np.log(xx)
        + bb * np.log1p(-xx)
    )
    value = np.exp(log_front) * _betacf(aa, bb, xx) / aa
    out[inner] = np.where(swap, 1.0 - value, value)
    return out


def normal_cdf(z) -> np.ndarray:
    z = _as_float(z)
    return 0.5 * np.vectorize(math.erfc, otypes=[float])(-z / math.sqrt(2.0))


def normal_ppf(p) -> np.ndarray:
    """Quantile of the standard normal (Acklam's rational approximation plus one Halley refinement)."""
    p = _as_float(p)
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.sqrt(-2.0 * np.log(np.minimum(p, 1.0 - p)))
        tail = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )
        r = (p - 0.5) ** 2
        central = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * (p - 0.5)
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        )
        x = np.where(p < 0.02425, tail, np.where(p > 1.0 - 0.02425, -tail, central))
        error = normal_cdf(x) - p
        u = error * math.sqrt(2.0 * math.pi) * np.exp(x * x / 2.0)
        x = x - u / (1.0 + x * u / 2.0)
    return np.where((p > 0) & (p < 1), x, np.where(p == 0, -np.inf, np.where(p == 1, np.inf, np.nan)))


def t_two_sided_p(t, df) -> np.ndarray:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (df may be fractional, as in Welch)."""
    t, df = np.broadcast_arrays(_as_float(t), _as_float(df))
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = betainc(df / 2.0, 0.5, df / (df + t * t))
    normal = 2.0 * normal_cdf(-np.abs(t))
    return np.where(df > _NORMAL_DF, normal, exact)


def t_cdf(t, df) -> np.ndarray:
    t = _as_float(t)
    half_tail = t_two_sided_p(t, df) / 2.0
    return np.where(t >= 0, 1.0 - half_tail, half_tail)


def t_pdf(t, df) -> np.ndarray:
    t, df = np.broadcast_arrays(_as_float(t), _as_float(df))
    log_norm = (
        _lgamma((df + 1.0) / 2.0).astype(float) - _lgamma(df / 2.0).astype(float) - 0.5 * np.log(df * math.pi)
    )
    return np.exp(log_norm - (df + 1.0) / 2.0 * np.log1p(t * t / df))


def t_ppf(p, df) -> np.ndarray:
    """Quantile of Student's t for df >= 1 (NaN below): Cornish-Fisher start, then bracketed Newton steps."""
    p, df = np.broadcast_arrays(_as_float(p), _as_float(df))
    out = np.full(p.shape, np.nan)
    valid = (df >= 1) & (p > 0) & (p < 1)
    if not valid.any():
        return out
    pv, dv = p[valid], df[valid]
    upper = np.maximum(pv, 1.0 - pv)  # solve in the upper half, mirror at the end
    z = normal_ppf(upper)
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0
    t = z + g1 / dv + g2 / dv**2 + g3 / dv**3 + g4 / dv**4
    # For df >= 1 the quantile lies between the normal's and the Cauchy's (df = 1).
    low, high = z.copy(), np.tan(math.pi * (upper - 0.5))
    t = np.clip(t, low, high)
    for _ in range(100):
        error = t_cdf(t, dv) - upper
        low = np.where(error < 0, t, low)
        high = np.where(error > 0, t, high)
        step = error / t_pdf(t, dv)
        candidate = t - step
        # A Newton step that leaves the bracket is replaced by bisection.
        outside = ~((candidate > low) & (candidate < high))
        candidate = np.where(outside, (low + high) / 2.0, candidate)
        done = np.all(np.abs(candidate - t) <= 1e-12 * np.maximum(1.0, np.abs(t)))
        t = candidate
        if done:
            break
    exact_cauchy = np.tan(math.pi * (upper - 0.5))
    t = np.where(dv == 1, exact_cauchy, t)
    out[valid] = np.where(pv >= 0.5, t, -t)
    return out


_T_CRITICAL_CACHE: dict[tuple[float, int], float] = {}


def t_critical(confidence: float, df) -> np.ndarray:
    """Two-sided critical value t_{(1+confidence)/2, df}; integer df are cached (CI widths reuse them)."""
    df = _as_float(df)
    out = np.full(df.shape, np.nan)
    whole = np.isfinite(df) & (df >= 1) & (df == np.round(df))
    missing = sorted({int(v) for v in df[whole] if (confidence, int(v)) not in _T_CRITICAL_CACHE})
    if missing:
        values = t_ppf(np.full(len(missing), (1.0 + confidence) / 2.0), np.array(missing, dtype=float))
        _T_CRITICAL_CACHE.update({(confidence, k): float(v) for k, v in zip(missing, values, strict=True)})
    out[whole] = [_T_CRITICAL_CACHE[(confidence, int(v))] for v in df[whole]]
    fractional = np.isfinite(df) & (df >= 1) & ~whole
    if fractional.any():
        out[fractional] = t_ppf(np.full(int(fractional.sum()), (1.0 + confidence) / 2.0), df[fractional])
    return out


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
    half = t_critical(confidence, n - 1) * se
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
    with np.errstate(divide="ignore", invalid="ignore"):
        va, vb = a.variance / a.n, b.variance / b.n
        se2 = va + vb
        testable = (a.n >= 2) & (b.n >= 2) & (se2 > 0)
        difference = np.where((a.n >= 1) & (b.n >= 1), a.mean - b.mean, np.nan)
        t = np.where(testable, difference / np.sqrt(se2), np.nan)
        df = np.where(testable, se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1)), np.nan)
    p = np.where(testable, t_two_sided_p(np.where(testable, t, 0.0), np.where(testable, df, 1.0)), np.nan)
    half = t_critical(confidence, df) * np.sqrt(se2)
    return WelchTest(difference=difference, t=t, df=df, p=p, low=difference - half, high=difference + half)


def benjamini_hochberg(p) -> np.ndarray:
    """BH-adjusted p-values (q-values) over the finite entries; NaN entries are not tested and stay NaN."""
    p = _as_float(p)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    m = int(tested.sum())
    if m == 0:
        return out
    values = p[tested]
    order = np.argsort(values, kind="stable")
    scaled = values[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[tested] = result
    return out


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values over the finite entries (controls the family-wise error rate)."""
    p = _as_float(p)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    m = int(tested.sum())
    if m == 0:
        return out
    values = p[tested]
    order = np.argsort(values, kind="stable")
    scaled = values[order] * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[tested] = result
    return out


CORRECTIONS = {"bh": benjamini_hochberg, "holm": holm}
