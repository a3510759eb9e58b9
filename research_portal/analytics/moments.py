"""Key moments of a trace: the seconds of an ad where a measure stands out, each with the reason it is listed.

A second is listed when both hold (docs/analytics.md, "Key moments"):
- it is a peak (or drop) with a prominence of at least `min_prominence(measure)` over its neighbours
  (scipy.signal.find_peaks on the per-second means of the seconds with n >= 2);
- its mean differs from the ad's mean (baseline-corrected: its corrected value from 0) in the peak's
  direction, by a one-sample t-test whose p, corrected across every tested second of the trace with the
  dashboard's correction (Benjamini-Hochberg or Holm, as for the country comparison), is below ALPHA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import find_peaks

from research_portal.analytics.definitions import ALPHA, MEASURE_LABELS
from research_portal.analytics.stats import CORRECTIONS, MeanEstimate, one_sample_test

TOP_MOMENTS = 3  # per measure and kind, the most prominent first
CORRECTION_NAMES = {"bh": "BH", "holm": "Holm"}
# The span of a measure's scale: probabilities (smile, the emotions) lie in [0, 1], valence in [-1, 1].
SCALE_SPAN = {"valence": 2.0}
# A moment rises (or dips) at least 5% of its measure's scale above the higher of the lowest points between
# it and a higher point on either side (its prominence): 0.05 of a probability, 0.10 of valence. A fixed
# share of the scale, not of the trace's own spread: a flat trace has a small spread, and a share of it
# would turn its jitter (a few hundredths, the 0.02 wiggles of a calm audience) into moments. Smaller
# changes are also too small to read on the chart. Whether a moment is more than noise is the t-test's to
# say; the prominence says whether it is big enough to matter.
MIN_PROMINENCE_SHARE = 0.05


def min_prominence(measure: str) -> float:
    return MIN_PROMINENCE_SHARE * SCALE_SPAN.get(measure, 1.0)


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _significant(value: float) -> float:
    """Three significant digits: a p of 2e-9 stays 2e-09, where rounding to places would make it 0."""
    return float(f"{value:.3g}")


@dataclass(frozen=True)
class KeyMoment:
    """One listed second of one measure's trace and what made it stand out."""

    measure: str
    label: str
    kind: str  # "peak" or "drop"
    second: int
    mean: float  # the second's mean across participants (baseline-corrected when `baseline`)
    low: float | None  # its 95% CI
    high: float | None
    n: int
    baseline: bool
    reference: float  # what the second was tested against: the ad's mean, or 0 when baseline-corrected
    difference: float  # mean - reference
    prominence: float
    p: float  # one-sample t-test, two-sided
    p_adjusted: float  # corrected across the trace's tested seconds
    correction: str  # "bh" or "holm"

    @property
    def time(self) -> str:
        return f"{self.second}–{self.second + 1} s"

    @property
    def reason(self) -> str:
        """E.g. "peak: 0.550, +0.310 above the ad's mean 0.240, p_adj = 0.003 (BH), prominence 0.280"."""
        side = "above" if self.difference > 0 else "below"
        against = "the participants' baselines" if self.baseline else f"the ad's mean {self.reference:.3f}"
        return (
            f"{self.kind}: {self.mean:.3f}, {self.difference:+.3f} {side} {against}, "
            f"p_adj {_p_text(self.p_adjusted)} ({CORRECTION_NAMES[self.correction]}), "
            f"prominence {self.prominence:.3f}"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "time": self.time, "reason": self.reason}


def moment_rule(correction: str) -> str:
    """How moments are chosen, in a sentence for the page."""
    return (
        "Listed: peaks and drops that rise or dip at least 5% of the measure's scale over their neighbours "
        "(prominence) and whose mean differs from the ad's mean (baseline-corrected: from 0) in a one-sample "
        f"t-test, p < {ALPHA} after {CORRECTION_NAMES[correction]} correction across the trace's seconds; "
        "seconds with fewer than 2 participants, and the first and last, are never moments."
    )


def reference_mean(estimate: MeanEstimate) -> float:
    """The ad's mean: over every participant-second of the trace (sum over seconds of n * mean / sum of n)."""
    counted = np.isfinite(estimate.mean) & (estimate.n > 0)
    total = float(estimate.n[counted].sum())
    return float((estimate.mean[counted] * estimate.n[counted]).sum() / total) if total else float("nan")


def key_moments(
    estimate: MeanEstimate, measure: str, baseline: bool, correction: str, top: int = TOP_MOMENTS
) -> list[KeyMoment]:
    """The trace's peaks and drops that stand out (module docstring), at most `top` of each kind, most
    prominent first.

    Approximation: the test treats the ad's mean as a fixed number, ignoring its own sampling error. It pools
    every second of the same participants, so that error is small next to one second's, and mostly shared
    with it (a participant who smiles more raises both), which leaves the test on the conservative side."""
    usable = np.flatnonzero(np.isfinite(estimate.mean) & (estimate.n >= 2))
    if usable.size < 3:  # a peak needs a neighbour on either side
        return []
    reference = 0.0 if baseline else reference_mean(estimate)
    test = one_sample_test(estimate, reference)
    # One family per trace, every testable second (as the country comparison): moments are picked after
    # looking at the trace, so correcting across the candidates alone would understate the multiplicity.
    adjusted = CORRECTIONS[correction](test.p)
    label = MEASURE_LABELS[measure] + (" (baseline-corrected)" if baseline else "")
    values = estimate.mean[usable]
    moments: list[KeyMoment] = []
    for kind, sign in (("peak", 1.0), ("drop", -1.0)):
        # Neighbours are the adjacent usable seconds; find_peaks never counts the first or last sample.
        positions, properties = find_peaks(sign * values, prominence=min_prominence(measure))
        seconds, prominences = usable[positions], properties["prominences"]
        with np.errstate(invalid="ignore"):
            stands_out = (adjusted[seconds] < ALPHA) & (sign * test.difference[seconds] > 0)
        seconds, prominences = seconds[stands_out], prominences[stands_out]
        ranked = np.argsort(-prominences, kind="stable")[:top]
        for second, prominence in zip(seconds[ranked], prominences[ranked], strict=True):
            low, high = estimate.low[second], estimate.high[second]
            moments.append(
                KeyMoment(
                    measure=measure,
                    label=label,
                    kind=kind,
                    second=int(second),
                    mean=round(float(estimate.mean[second]), 4),
                    low=round(float(low), 4) if np.isfinite(low) else None,
                    high=round(float(high), 4) if np.isfinite(high) else None,
                    n=int(estimate.n[second]),
                    baseline=baseline,
                    reference=round(reference, 4),
                    difference=round(float(test.difference[second]), 4),
                    prominence=round(float(prominence), 4),
                    p=_significant(test.p[second]),
                    p_adjusted=_significant(adjusted[second]),
                    correction=correction,
                )
            )
    return moments
