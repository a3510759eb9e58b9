"""The dashboard's numbers against a fixture computed by hand: participants are the unit (frames are averaged
within each participant-second first), t-based 95% CIs, n per second, quality filter, baseline correction,
filters, and a per-second country test that finds exactly the seconds built to differ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research_portal.analytics.dashboard import build_ad_dashboard, load_traces
from research_portal.analytics.services import parse_filters
from research_portal.capture.storage import store_results
from tests.support.readings import MODEL, FrameWriter, new_participant

T2 = 4.302652729749464  # t_{0.975, 2}
T1 = 12.706204736174707  # t_{0.975, 1}


def dashboard(acme, **query):
    return build_ad_dashboard(acme.ad, parse_filters(query))


def trace(payload: dict, name: str) -> dict:
    return next(t for t in payload["figures"]["trace"]["data"] if t["name"] == name)


def band(payload: dict, name: str) -> tuple[list, list]:
    traces = payload["figures"]["trace"]["data"]
    upper = next(t for t in traces if t["name"] == f"{name} 95% CI (upper)")
    lower = next(t for t in traces if t["name"] == f"{name} 95% CI")
    return lower["y"], upper["y"]


def test_means_bands_and_counts_use_participants_as_the_unit(hand_fixture):
    payload = dashboard(hand_fixture)
    smile = trace(payload, "Smile")
    # s0: participant means 0.5 (P1: (0.2+0.4+0.9)/3), 0.7, 0.3 -> mean 0.5, sd 0.2, half t2*0.2/sqrt(3).
    # s1: 0.6, 0.3, 0.9 -> mean 0.6, sd 0.3. Frame-weighted would give s0 = 2.8/6 = 0.4667: not what we show.
    assert smile["y"][:2] == pytest.approx([0.5, 0.6])
    assert smile["y"][2] is None and smile["y"][3] is None  # nobody in seconds 2 and 3
    assert [row[0] for row in smile["customdata"][:3]] == [3, 3, 0]
    low, high = band(payload, "Smile")
    half0, half1 = T2 * 0.2 / math.sqrt(3), T2 * 0.3 / math.sqrt(3)
    assert low[:2] == pytest.approx([0.5 - half0, 0.6 - half1], abs=1e-6)
    assert high[:2] == pytest.approx([0.5 + half0, 0.6 + half1], abs=1e-6)
    assert half0 == pytest.approx(0.496828, abs=1e-6)
    bars = next(t for t in payload["figures"]["trace"]["data"] if t["name"] == "Participants (n)")
    assert bars["y"][:4] == [3, 3, 0, 0]
    assert payload["totals"]["participants"] == 3
    assert payload["model_version"] == MODEL


def test_a_measure_missing_on_some_frames_counts_only_participants_who_have_it(hand_fixture):
    valence = trace(dashboard(hand_fixture), "Valence")
    # P3 has no valence in s0: n = 2, P1 (2*0.2-1 + 2*0.4-1 + 2*0.9-1)/3 = 0.0, P2 0.4 -> mean 0.2.
    assert valence["customdata"][0][0] == 2
    assert valence["y"][0] == pytest.approx(0.2)
    # s1: P1 0.2, P2 -0.4, P3 0.8 -> 0.2, n = 3.
    assert valence["y"][1] == pytest.approx(0.2) and valence["customdata"][1][0] == 3


def test_quality_threshold_drops_frames_before_averaging(hand_fixture):
    smile = trace(dashboard(hand_fixture, quality="0.3"), "Smile")
    # P1's 0.9 frame has quality 0.1: P1's s0 mean becomes 0.3; s0 = (0.3 + 0.7 + 0.3) / 3.
    assert smile["y"][0] == pytest.approx(1.3 / 3)
    assert smile["customdata"][0][0] == 3


def test_baseline_correction_subtracts_each_participants_own_baseline(hand_fixture):
    payload = dashboard(hand_fixture, baseline="1")
    smile = trace(payload, "Smile")
    # P3 has no baseline frame with a face: excluded. s0: P1 0.5-0.2 = 0.3, P2 0.7-0.4 = 0.3 -> 0.3, sd 0.
    # s1: P1 0.6-0.2 = 0.4, P2 0.3-0.4 = -0.1 -> 0.15, sd = sqrt(0.125), half = t1 * sqrt(0.125)/sqrt(2).
    assert smile["y"][:2] == pytest.approx([0.3, 0.15])
    assert [row[0] for row in smile["customdata"][:2]] == [2, 2]
    low, high = band(payload, "Smile")
    assert low[0] == pytest.approx(0.3) and high[0] == pytest.approx(0.3)
    half = T1 * math.sqrt(0.125) / math.sqrt(2)
    assert (low[1], high[1]) == pytest.approx((0.15 - half, 0.15 + half), abs=1e-6)
    assert "baseline" in payload["figures"]["trace"]["layout"]["yaxis"]["title"]["text"]


def test_filters_recompute_country_device_and_completed(hand_fixture):
    completed = trace(dashboard(hand_fixture, completed="1"), "Smile")
    assert completed["y"][0] == pytest.approx(0.6)  # P1 0.5, P2 0.7
    low, _high = band(dashboard(hand_fixture, completed="1"), "Smile")
    assert low[0] == pytest.approx(0.6 - T1 * math.sqrt(0.02) / math.sqrt(2), abs=1e-6)
    us = trace(dashboard(hand_fixture, country="US"), "Smile")
    assert us["y"][:2] == pytest.approx([0.3, 0.9]) and us["customdata"][0][0] == 1
    assert band(dashboard(hand_fixture, country="US"), "Smile")[0][0] is None  # n = 1: no CI
    mobile = trace(dashboard(hand_fixture, device="mobile"), "Smile")
    assert mobile["y"][:2] == pytest.approx([0.7, 0.3])
    later = dashboard(hand_fixture, **{"from": "2100-01-01"})
    assert later["totals"]["participants"] == 0 and trace(later, "Smile")["y"][0] is None


def test_country_summary_and_key_moments(hand_fixture):
    payload = dashboard(hand_fixture)
    summary = {row["country"]: row for row in payload["summary"]}
    assert summary["All"]["participants"] == 3 and summary["DE"]["participants"] == 2
    # Mean valence over the ad per participant: P1 (0.0+0.2)/2 = 0.1, P2 (0.4-0.4)/2 = 0, P3 0.8 (s1 only).
    assert summary["All"]["mean_valence"] == pytest.approx(0.3, abs=1e-4)
    assert summary["DE"]["mean_valence"] == pytest.approx(0.05, abs=1e-4)
    # Peak of the DE smile trace: s0 (0.5 + 0.7) / 2 = 0.6 vs s1 (0.6 + 0.3) / 2 = 0.45.
    assert summary["DE"]["peak_smile"] == pytest.approx(0.6) and summary["DE"]["peak_smile_time"] == "0–1 s"
    # Smiled = some per-second smile mean >= 0.5: P1 (0.5, 0.6), P2 (0.7, 0.3), P3 (0.3, 0.9): all three.
    assert summary["All"]["smiled_share"] == pytest.approx(1.0)
    assert summary["US"]["smiled_share"] == pytest.approx(1.0)
    assert summary["All"]["frames"] == 10  # 3 + 1 + 1 + 2 + 2 + 1 ad frames with a face
    # Only two usable seconds: no interior extremes, so no key moments are claimed
    # (tests/analytics/test_key_moments.py tests the rule).
    assert payload["moments"] == []


def test_country_difference_is_significant_exactly_where_it_was_built(acme):
    """DE and US: 10 participants each over the 4 s ad. In seconds 0-1 DE smiles at 0.8, US at 0.3; in 2-3
    both at 0.3 (US drifts by 0.001 per second). Participant noise is the same pattern in both groups."""
    noise = np.linspace(-0.05, 0.05, 10)
    for country in ("DE", "US"):
        for index in range(10):
            writer = FrameWriter(new_participant(acme.study, country))
            rows = []
            for second in range(4):
                level = 0.8 if country == "DE" and second < 2 else 0.3
                # Frames differ within the second; the participant's mean is level + noise (+ US drift).
                value = level + noise[index] + (0.001 * second if country == "US" else 0.0)
                rows += writer.frames(acme.ad, second, [value - 0.02, value + 0.02])
            store_results(rows)
    payload = dashboard(acme, compare=["DE", "US"], measure="smile")
    comparison = payload["comparison"]
    assert comparison["countries"] == ["DE", "US"]
    assert comparison["significant_seconds"] == [0, 1]
    assert comparison["tested_seconds"] == 4
    row = comparison["rows"][0]
    # Equal variances and n: Welch t = d / sqrt(2 s^2 / n), df = 2 (n - 1) = 18.
    sd = float(np.std(noise, ddof=1))
    assert row["difference"] == pytest.approx(0.5, abs=1e-6)
    assert row["t"] == pytest.approx(0.5 / math.sqrt(2 * sd**2 / 10), rel=1e-6)
    assert row["df"] == pytest.approx(18.0, rel=1e-6)
    assert row["p"] < 1e-10 and row["significant"]
    later = comparison["rows"][3]  # US is 0.003 higher there: t = 0.003 / 0.015, far from significant
    assert later["difference"] == pytest.approx(-0.003, abs=1e-6) and later["p"] > 0.5
    assert not later["significant"] and later["p_adjusted"] >= later["p"]
    holm = dashboard(acme, compare=["DE", "US"], correction="holm")["comparison"]
    assert holm["significant_seconds"] == [0, 1]
    # The chart highlights the same seconds: one shaded rectangle each, and a named marker trace.
    shapes = payload["figures"]["countries"]["layout"]["shapes"]
    assert sorted(shape["x0"] for shape in shapes) == [0, 1]
    names = [t["name"] for t in payload["figures"]["countries"]["data"]]
    assert "Significant: Germany (DE) vs United States (US)" in names
    assert "Germany (DE)" in names and "United States (US)" in names
    assert payload["figures"]["difference"]["data"][2]["name"] == "Smile: Germany (DE) − United States (US)"
    multiples = dashboard(acme, compare=["DE", "US"], layout="multiples")["figures"]["countries"]
    assert [a["text"] for a in multiples["layout"]["annotations"]] == [
        "<b>Germany (DE)</b>",
        "<b>United States (US)</b>",
    ]


def test_traces_load_from_rollups_not_frames(hand_fixture, django_assert_max_num_queries):
    filters = parse_filters({}).with_model(MODEL)
    with django_assert_max_num_queries(1):
        traces = load_traces(hand_fixture.ad, filters, MODEL)
    assert traces.countries == ["DE", "US"]
    assert list(traces.participants()[:2]) == [3, 3]
