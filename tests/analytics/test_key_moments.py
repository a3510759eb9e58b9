"""Key moments against hand-worked examples: a moment needs prominence over its neighbours AND a difference
from the ad's mean (baseline-corrected: from 0) that survives the dashboard's correction across the trace's
tested seconds. Per-second estimates are built from their sufficient statistics (n, mean, sd) where the
example is about the rule, and from stored readings where it is about the dashboard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research_portal.analytics.dashboard import build_ad_dashboard
from research_portal.analytics.moments import KeyMoment, key_moments, min_prominence, reference_mean
from research_portal.analytics.services import parse_filters
from research_portal.analytics.stats import estimate_means, one_sample_test
from tests.support.readings import FrameWriter, new_participant

T98_9 = 2.398440985  # t_{0.98, 9}: two-sided p = 0.04 on 9 df (tables: 2.398)


def estimate(means, sds, ns):
    """The MeanEstimate of seconds with these participant counts, means and SDs (sum = n * mean, sum of
    squares = (n - 1) sd^2 + n mean^2)."""
    means, sds, ns = (np.asarray(values, dtype=float) for values in (means, sds, ns))
    return estimate_means(ns, ns * means, (ns - 1) * sds**2 + ns * means**2)


def test_one_real_peak_among_small_wiggles_is_the_only_moment():
    # Wiggles of 0.02-0.03 around 0.2 and one real peak of 0.55 in s3; 10 participants, sd 0.1 each second.
    means = [0.20, 0.23, 0.21, 0.55, 0.22, 0.24, 0.21]
    trace = estimate(means, [0.1] * 7, [10] * 7)
    moments = key_moments(trace, "smile", baseline=False, correction="bh")
    assert [(m.kind, m.second) for m in moments] == [("peak", 3)]
    peak = moments[0]
    # Prominence: s3 over the higher of the lowest points on either side, max(0.20, 0.21) -> 0.55 - 0.21.
    # The wiggles: s1 0.23 over max(0.20, 0.21), s5 0.24 over max(0.22, 0.21), the dips s2, s4 likewise:
    # 0.02 each, under the 0.05 minimum.
    assert peak.prominence == pytest.approx(0.34)
    assert min_prominence("smile") == pytest.approx(0.05) and min_prominence("valence") == pytest.approx(0.1)
    # The ad's mean (equal n): 1.86 / 7; t = (0.55 - 0.265714) / (0.1 / sqrt(10)) = 8.99 on 9 df.
    assert peak.reference == pytest.approx(1.86 / 7, abs=1e-4)
    assert peak.difference == pytest.approx(0.55 - 1.86 / 7, abs=1e-4)
    t = (0.55 - 1.86 / 7) / (0.1 / math.sqrt(10))
    assert t == pytest.approx(8.9899, abs=1e-4)
    assert peak.p < 1e-5
    # BH over the 7 tested seconds: the smallest p times 7 (every other second has p > 0.06, so no later
    # rank lowers it).
    assert peak.p_adjusted == pytest.approx(7 * peak.p, rel=1e-2)
    assert (peak.mean, peak.n, peak.time) == (0.55, 10, "3–4 s")
    assert peak.reason == (
        "peak: 0.550, +0.284 above the ad's mean 0.266, p_adj < 0.001 (BH), prominence 0.340"
    )


def test_a_prominent_peak_of_two_participants_who_disagree_is_not_listed():
    means = [0.20, 0.22, 0.20, 0.60, 0.21, 0.20, 0.22]
    ns = [10, 10, 10, 2, 10, 10, 10]
    noisy = estimate(means, [0.1, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1], ns)
    # The ad's mean over participant-seconds: (10 * 1.25 + 2 * 0.6) / 62 = 13.7 / 62.
    reference = reference_mean(noisy)
    assert reference == pytest.approx(13.7 / 62)
    # t = (0.6 - 0.220968) / (0.5 / sqrt 2) = 1.07206 on 1 df; p (Cauchy) = 1 - (2 / pi) atan|t| = 0.4779.
    test = one_sample_test(noisy, reference)
    t = (0.6 - 13.7 / 62) / (0.5 / math.sqrt(2))
    assert test.t[3] == pytest.approx(t) and test.df[3] == 1
    assert test.p[3] == pytest.approx(1 - 2 / math.pi * math.atan(t))
    assert test.p[3] == pytest.approx(0.4779, abs=1e-4)
    assert key_moments(noisy, "smile", baseline=False, correction="bh") == []
    # The same peak from ten participants who agree (sd 0.1) is listed.
    agreed = estimate(means, [0.1] * 7, [10] * 7)
    assert [(m.kind, m.second) for m in key_moments(agreed, "smile", False, "bh")] == [("peak", 3)]


def test_a_second_that_cannot_be_tested_is_not_a_moment_and_not_counted():
    # s3 has no variance (both participants read 0.6): untested (as in the Welch test), so it is neither
    # listed nor part of the correction's family.
    trace = estimate(
        [0.2, 0.2, 0.25, 0.6, 0.2, 0.22], [0.1, 0.1, 0.1, 0.0, 0.1, 0.1], [10, 10, 10, 2, 10, 10]
    )
    test = one_sample_test(trace, reference_mean(trace))
    assert np.isnan(test.p[3]) and np.isfinite(test.p[[0, 1, 2, 4, 5]]).all()
    assert key_moments(trace, "smile", False, "bh") == []


def test_bh_lists_what_holm_does_not():
    """Alternating 0.2 / 0.5 over five seconds of ten participants: each second's SD is set so that its
    one-sample t is exactly t_{0.98, 9}, i.e. every raw p = 0.04. BH: p_(k) * 5 / k, smallest from the top:
    0.04 for all; Holm: p_(k) * (5 - k + 1) with a running maximum: 0.2 for all."""
    means = [0.2, 0.5, 0.2, 0.5, 0.2]
    reference = (3 * 0.2 + 2 * 0.5) / 5  # 0.32
    sds = [abs(mean - reference) * math.sqrt(10) / T98_9 for mean in means]
    trace = estimate(means, sds, [10] * 5)
    assert one_sample_test(trace, reference).p == pytest.approx([0.04] * 5, abs=1e-8)

    bh = key_moments(trace, "smile", baseline=False, correction="bh")
    # Peaks s1 and s3 (prominence 0.3 each, in time order when equal), the drop s2; the edges s0, s4 are
    # never moments.
    assert [(m.kind, m.second) for m in bh] == [("peak", 1), ("peak", 3), ("drop", 2)]
    assert all(m.p_adjusted == pytest.approx(0.04, abs=1e-6) for m in bh)
    assert bh[2].reason == (
        "drop: 0.200, -0.120 below the ad's mean 0.320, p_adj = 0.040 (BH), prominence 0.300"
    )
    assert key_moments(trace, "smile", baseline=False, correction="holm") == []


def test_baseline_mode_tests_the_corrected_value_against_zero():
    # Baseline-corrected values: -0.3 everywhere but 0.02 in s2. Against the trace's own mean (-0.236) s2 is
    # a clear peak; against 0 (no change from the participants' baselines) it is 0.02: t = 0.02 / (0.1 /
    # sqrt 10) = 0.632 on 9 df, p = 0.54, not a moment.
    trace = estimate([-0.3, -0.3, 0.02, -0.3, -0.3], [0.1] * 5, [10] * 5)
    plain = key_moments(trace, "smile", baseline=False, correction="bh")
    assert [(m.kind, m.second, m.reference) for m in plain] == [("peak", 2, -0.236)]
    assert one_sample_test(trace, 0.0).t[2] == pytest.approx(0.02 / (0.1 / math.sqrt(10)))
    assert key_moments(trace, "smile", baseline=True, correction="bh") == []
    # A corrected peak well above 0 is listed, with 0 as its reference and the baselines in its reason.
    lifted = estimate([0.0, 0.01, 0.3, 0.0, 0.01], [0.1] * 5, [10] * 5)
    (moment,) = key_moments(lifted, "smile", baseline=True, correction="holm")
    assert (moment.kind, moment.second, moment.reference, moment.difference) == ("peak", 2, 0.0, 0.3)
    assert moment.label == "Smile (baseline-corrected)"
    assert moment.reason.startswith("peak: 0.300, +0.300 above the participants' baselines, p_adj")
    assert "(Holm)" in moment.reason


def test_at_most_three_of_each_kind_most_prominent_first():
    means = [0.2, 0.5, 0.2, 0.7, 0.2, 0.4, 0.2, 0.6, 0.2, 0.3, 0.2]
    moments = key_moments(estimate(means, [0.05] * 11, [30] * 11), "smile", False, "bh")
    assert [m.second for m in moments if m.kind == "peak"] == [3, 7, 1]


def writer_trace(acme, shape: list[float], offsets: list[float], country: str = "DE") -> None:
    """One participant per offset, one frame per second: smile = shape[second] + offset."""
    for offset in offsets:
        writer = FrameWriter(new_participant(acme.study, country))
        for second, value in enumerate(shape):
            writer.store(acme.ad, second, [value + offset])


def test_the_dashboard_lists_the_real_peak_and_says_why(acme):
    writer_trace(acme, [0.20, 0.22, 0.20, 0.60, 0.21, 0.23, 0.20], [-0.05, -0.03, -0.01, 0.01, 0.03, 0.05])
    payload = build_ad_dashboard(acme.ad, parse_filters({}))
    moments = payload["moments"]
    # Prominence: 0.60 over max(0.20, 0.20), the lowest points on either side. Valence = 2 smile - 1: the
    # same peak, twice the prominence (0.80 against a minimum of 0.10).
    assert [(m["measure"], m["kind"], m["second"]) for m in moments] == [
        ("smile", "peak", 3),
        ("valence", "peak", 3),
    ]
    smile = moments[0]
    assert set(smile) == {*KeyMoment.__dataclass_fields__, "time", "reason"}
    assert (
        smile["n"] == 6 and smile["mean"] == pytest.approx(0.6) and smile["prominence"] == pytest.approx(0.4)
    )
    assert smile["reference"] == pytest.approx(1.86 / 7, abs=1e-4)
    assert smile["reason"].startswith("peak: 0.600, +0.334 above the ad's mean 0.266, p_adj < 0.001 (BH)")
    assert moments[1]["prominence"] == pytest.approx(0.8)
    assert "prominence" in payload["moment_rule"] and "BH" in payload["moment_rule"]
    holm = build_ad_dashboard(acme.ad, parse_filters({"correction": "holm"}))
    assert all(m["correction"] == "holm" for m in holm["moments"]) and "Holm" in holm["moment_rule"]


def test_hand_computed_p_values_of_a_three_participant_trace(acme):
    """Three participants at shape + (-0.05, 0, +0.05): sd 0.05, se 0.05 / sqrt 3, on 2 df, where the
    two-sided p is 1 - |t| / sqrt(t^2 + 2). The ad's mean is 0.35; t per second: -3 sqrt 3, 9 sqrt 3,
    -sqrt 3, -5 sqrt 3; p = 0.035099, 0.004090, 0.225403, 0.013072. BH (m = 4) adjusts the peak's p to
    4 p = 0.016360. The end's low (s3) has a neighbour on one side only: not a drop."""
    writer_trace(acme, [0.2, 0.8, 0.3, 0.1], [-0.05, 0.0, 0.05])
    (peak,) = build_ad_dashboard(acme.ad, parse_filters({"measure": "smile"}))["moments"][:1]
    t = 9 * math.sqrt(3)
    p = 1 - t / math.sqrt(t * t + 2)
    assert p == pytest.approx(0.004090, abs=1e-6)
    assert (peak["measure"], peak["kind"], peak["second"]) == ("smile", "peak", 1)
    assert peak["reference"] == pytest.approx(0.35) and peak["prominence"] == pytest.approx(0.6)
    assert peak["p"] == pytest.approx(p, rel=1e-3) and peak["p_adjusted"] == pytest.approx(4 * p, rel=1e-2)
    moments = build_ad_dashboard(acme.ad, parse_filters({}))["moments"]
    assert [(m["kind"], m["second"]) for m in moments if m["measure"] == "smile"] == [("peak", 1)]
