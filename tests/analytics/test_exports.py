"""CSV exports: tidy rows, the filters applied, the model version in every row, values that match the
hand-computed fixture (see conftest.hand_fixture)."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from research_portal.analytics.definitions import MEASURES
from tests.support.readings import MODEL


def export(client, acme, kind: str, query: str = "") -> list[dict]:
    response = client.get(
        reverse("analytics:ad-export", args=[acme.ad.pk, kind]) + (f"?{query}" if query else "")
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert f'filename="ad-{acme.ad.pk}-{kind}.csv"' in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def signed_in(client, analysts):
    client.force_login(analysts.acme)
    return client


def test_frame_export_has_every_reading_with_its_model_version(signed_in, hand_fixture):
    rows = export(signed_in, hand_fixture, "frames")
    # Ad frames: P1 4, P2 3, P3 3; baseline frames: P1 2, P2 1, P3 2 (without a face).
    assert len(rows) == 15
    assert {row["phase"] for row in rows} == {"ad", "baseline"}
    assert sum(row["phase"] == "baseline" for row in rows) == 5
    assert all(row["model_version"] == MODEL for row in rows)
    no_face = [row for row in rows if row["face_found"] == "0"]
    assert len(no_face) == 2 and all(row["happy"] == "" for row in no_face)
    first = next(row for row in rows if row["phase"] == "ad" and row["country"] == "DE" and row["seq"] == "2")
    assert first["smile"] == "0.2" and first["second"] == "0" and first["ad_title"] == "Spring ad"
    assert {"face_yaw", "face_pitch", "attending"} <= set(first)  # the head pose behind attention
    # Filters: quality >= 0.3 drops frames without a face and P1's 0.1-quality frame; a country keeps its own.
    assert len(export(signed_in, hand_fixture, "frames", "quality=0.3")) == 15 - 2 - 1
    us = export(signed_in, hand_fixture, "frames", "country=US")
    assert len(us) == 5 and {row["country"] for row in us} == {"US"}
    assert len(export(signed_in, hand_fixture, "frames", "completed=1")) == 10


def test_per_second_export_has_participant_means_and_baseline_correction(signed_in, hand_fixture):
    rows = export(signed_in, hand_fixture, "seconds")
    assert len(rows) == 6  # 3 participants x 2 seconds
    assert all(row["model_version"] == MODEL and row["quality_min"] == "0.0" for row in rows)
    p1 = next(
        row for row in rows if row["country"] == "DE" and row["second"] == "0" and row["n_frames"] == "3"
    )
    assert float(p1["smile"]) == pytest.approx(0.5)
    assert float(p1["smile_baseline"]) == pytest.approx(0.2)
    assert float(p1["smile_minus_baseline"]) == pytest.approx(0.3)
    # attention: every analysed frame of the second attends (the readings carry no head pose: counted as
    # attending, docs/analytics.md)
    assert p1["n_analysed_frames"] == "3" and p1["n_attending_frames"] == "3" and float(p1["attention"]) == 1
    p3 = next(row for row in rows if row["country"] == "US" and row["second"] == "0")
    assert p3["valence"] == "" and p3["n_valence_frames"] == "0"  # no valence: empty, not zero
    assert p3["smile_baseline"] == "" and p3["smile_minus_baseline"] == ""  # no baseline face
    filtered = export(signed_in, hand_fixture, "seconds", "quality=0.3")
    p1_filtered = next(r for r in filtered if r["session_id"] == p1["session_id"] and r["second"] == "0")
    assert float(p1_filtered["smile"]) == pytest.approx(0.3) and p1_filtered["quality_min"] == "0.3"


def test_trace_export_is_long_and_tidy(signed_in, hand_fixture):
    rows = export(signed_in, hand_fixture, "traces")
    groups = {"all", "DE", "US"}
    assert {row["group"] for row in rows} == groups
    seconds = 4  # the 4 s ad
    # every measure raw and baseline-corrected, expressiveness too; attention raw only
    assert len(rows) == len(groups) * ((len(MEASURES) + 1) * 2 + 1) * seconds
    attention = [row for row in rows if row["measure"] == "attention"]
    assert {row["correction"] for row in attention} == {"none"}
    expressiveness = {
        (row["group"], row["correction"], row["second"]): row
        for row in rows
        if row["measure"] == "expressiveness"
    }
    assert all(row["model_version"] == MODEL for row in rows)
    smile = {
        (row["group"], row["correction"], row["second"]): row for row in rows if row["measure"] == "smile"
    }
    overall = smile[("all", "none", "0")]
    assert overall["n_participants"] == "3" and float(overall["mean"]) == pytest.approx(0.5)
    assert float(overall["sd"]) == pytest.approx(0.2)
    assert float(overall["ci95_low"]) == pytest.approx(0.5 - 0.4968275, abs=1e-6)
    corrected = smile[("all", "baseline", "0")]
    assert corrected["n_participants"] == "2" and float(corrected["mean"]) == pytest.approx(0.3)
    neutral = {
        (row["group"], row["second"]): row
        for row in rows
        if row["measure"] == "neutral" and row["correction"] == "none"
    }
    assert float(expressiveness[("all", "none", "0")]["mean"]) == pytest.approx(
        1 - float(neutral[("all", "0")]["mean"])
    )
    empty = smile[("all", "none", "3")]
    assert empty["n_participants"] == "0" and empty["mean"] == ""
    de_only = export(signed_in, hand_fixture, "traces", "country=DE&completed=1")
    assert {row["group"] for row in de_only} == {"all", "DE"}
    assert {row["countries_filter"] for row in de_only} == {"DE"}
    assert {row["completed_only"] for row in de_only} == {"1"}


def test_comparison_export_matches_the_dashboard_test(signed_in, hand_fixture):
    rows = export(signed_in, hand_fixture, "comparison", "compare=DE&compare=US")
    assert [row["second"] for row in rows] == ["0", "1", "2", "3"]
    first = rows[0]
    assert (first["country_a"], first["country_b"], first["n_a"], first["n_b"]) == ("DE", "US", "2", "1")
    assert float(first["difference"]) == pytest.approx(0.6 - 0.3)
    assert first["p"] == ""  # US has one participant: not testable, and not claimed
    assert all(row["model_version"] == MODEL and row["significant"] == "0" for row in rows)
