"""Attention, retention and expressiveness against examples worked by hand (docs/analytics.md): attention
counts every analysed frame of a second, with or without a face; retention follows each participant's first
inattentive second; expressiveness is 1 - p(neutral), derived exactly from the neutral measure's cells.
The incremental rollups agree with the set-wise rebuild and with a plain-Python computation from raw
frames."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import cv2
import numpy as np
import pytest

from research_portal.analytics.dashboard import build_ad_dashboard, load_traces
from research_portal.analytics.definitions import ATTENTION_THRESHOLD, QUALITY_LEVELS, cell_value_columns
from research_portal.analytics.models import ParticipantAdSummary, SecondCell, SecondRollup
from research_portal.analytics.rollups import do_rebuild_rollups
from research_portal.analytics.services import parse_filters
from research_portal.capture.analysis import analyze_and_store_frames
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import READING_LABELS
from research_portal.capture.storage import store_results
from research_portal.capture.wire import Frame
from research_portal.studies.models import Ad
from tests.support.readings import FrameWriter, new_participant

T2 = 4.302652729749464  # t_{0.975, 2}
T1 = 12.706204736174707  # t_{0.975, 1}
SUMMARY_FIELDS = (
    "n_seconds",
    "n_frames",
    "mean_expressiveness",
    "mean_expressiveness_bc",
    "mean_attention",
    "retained_seconds",
)


@pytest.fixture
def three_second_ad(acme):
    return Ad.objects.create(study=acme.study, title="Three seconds", duration_ms=3000, position=1)


def frames(writer: FrameWriter, ad, second: int, attending: list, **kwargs) -> list[FrameResult]:
    """One frame per entry: True / False (a face turned to the screen or not), None (a face without a pose,
    e.g. Haar), "no face", or "error" (a frame that could not be analysed)."""
    smiles = [None if value in ("no face", "error") else 0.3 for value in attending]
    rows = writer.frames(ad, second, smiles, **kwargs)
    for row, value in zip(rows, attending, strict=True):
        if value == "error":
            row.error = "could not decode image"
        elif value != "no face":
            row.attending = value
    return rows


def figure_trace(payload: dict, figure: str, name: str) -> dict:
    return next(t for t in payload["figures"][figure]["data"] if t["name"] == name)


def band(payload: dict, figure: str, name: str) -> tuple[list, list]:
    return (
        figure_trace(payload, figure, f"{name} 95% CI")["y"],
        figure_trace(payload, figure, f"{name} 95% CI (upper)")["y"],
    )


RETAINED = f"Retained (attention ≥ {ATTENTION_THRESHOLD:g} in every second so far)"


@pytest.fixture
def attention_fixture(acme, three_second_ad):
    """Three participants over the 3 s ad (T/F: a face turned to the screen or not, -: no face, ?: a face
    without a pose, E: an error frame):

    P1 (DE): s0 T T F -  (2/4 = 0.5) | s1 T T (1.0) | s2 - - (0.0)
    P2 (DE): s0 T ?      (1.0)       | s1 F F (0.0) | s2 T   (1.0)
    P3 (US): s0 E T      (1.0)       | s1 no frames  | s2 T F (0.5)
    """
    ad = three_second_ad
    p1, p2, p3 = (new_participant(acme.study, c) for c in ("DE", "DE", "US"))
    w1, w2, w3 = FrameWriter(p1), FrameWriter(p2), FrameWriter(p3)
    store_results(frames(w1, ad, 0, [True, True, False, "no face"]))
    store_results(frames(w1, ad, 1, [True, True]) + frames(w1, ad, 2, ["no face", "no face"]))
    store_results(frames(w2, ad, 0, [True, None]) + frames(w2, ad, 1, [False, False]))
    store_results(frames(w2, ad, 2, [True]))
    store_results(frames(w3, ad, 0, ["error", True]) + frames(w3, ad, 2, [True, False]))
    return ad


def test_attention_counts_every_analysed_frame_with_or_without_a_face(attention_fixture):
    payload = build_ad_dashboard(attention_fixture, parse_filters({}))
    attention = figure_trace(payload, "attention", "Attention")
    # s0: 0.5, 1.0, 1.0 -> mean 5/6, sd sqrt(1/12); s1: 1.0, 0.0 -> 0.5, sd sqrt(1/2); s2: 0, 1, 0.5 -> 0.5.
    assert attention["y"] == pytest.approx([5 / 6, 0.5, 0.5])
    assert [row[0] for row in attention["customdata"]] == [3, 2, 3]
    low, high = band(payload, "attention", "Attention")
    halves = [
        T2 * math.sqrt(1 / 12) / math.sqrt(3),
        T1 * math.sqrt(0.5) / math.sqrt(2),
        T2 * 0.5 / math.sqrt(3),
    ]
    assert halves[0] == pytest.approx(0.717109, abs=1e-6)
    means = [5 / 6, 0.5, 0.5]
    assert low == pytest.approx([m - h for m, h in zip(means, halves, strict=True)], abs=1e-6)
    assert high == pytest.approx([m + h for m, h in zip(means, halves, strict=True)], abs=1e-6)
    # The bars under the attention chart count participants with an analysed frame; the readings' n only
    # those with a face (P1 has none in s2).
    bars = figure_trace(payload, "attention", "Participants (n)")
    assert bars["y"] == [3, 2, 3]
    smile = figure_trace(payload, "trace", "Smile")
    assert [row[0] for row in smile["customdata"]] == [3, 2, 2]


def test_attention_ignores_the_quality_level_and_follows_the_other_filters(attention_fixture):
    for quality in QUALITY_LEVELS:  # the frames' quality is 0.9 or none (no face): the same at every level
        payload = build_ad_dashboard(attention_fixture, parse_filters({"quality": str(quality)}))
        assert figure_trace(payload, "attention", "Attention")["y"] == pytest.approx([5 / 6, 0.5, 0.5])
    germany = build_ad_dashboard(attention_fixture, parse_filters({"country": "DE"}))
    assert figure_trace(germany, "attention", "Attention")["y"] == pytest.approx([0.75, 0.5, 0.5])
    corrected = build_ad_dashboard(attention_fixture, parse_filters({"baseline": "1"}))
    assert figure_trace(corrected, "attention", "Attention")["y"] == pytest.approx([5 / 6, 0.5, 0.5])


def test_countries_can_be_compared_on_attention_raw_even_with_the_baseline_switch(attention_fixture):
    """Attention is offered as the compared measure; it has no baseline-corrected variant, so DE vs US
    compares the raw shares whatever the switch: DE s0 (0.5, 1.0) vs US s0 (1.0)."""
    for baseline in ("", "1"):
        query = {"measure": "attention", "compare": ["DE", "US"], "baseline": baseline}
        payload = build_ad_dashboard(attention_fixture, parse_filters(query))
        assert ["attention", "Attention"] in payload["options"]["measures"]
        comparison = payload["comparison"]
        assert comparison["measure"] == "attention" and comparison["countries"] == ["DE", "US"]
        germany = figure_trace(payload, "countries", "Germany (DE)")
        assert germany["y"] == pytest.approx([0.75, 0.5, 0.5])
        assert payload["figures"]["countries"]["layout"]["yaxis"]["title"]["text"] == "Attention"


def test_retention_curve_follows_each_participants_first_inattentive_second(attention_fixture):
    # P1 is lost at s2 (0.0), P2 at s1 (0.0), P3 never: s1 has no frames (skipped), s2 is 0.5 (>= 0.5).
    summaries = dict(
        ParticipantAdSummary.objects.filter(ad=attention_fixture, level=0)
        .order_by("session_id")
        .values_list("session_id", "retained_seconds")
    )
    assert list(summaries.values()) == [2, 1, 3]
    payload = build_ad_dashboard(attention_fixture, parse_filters({}))
    retained = figure_trace(payload, "attention", RETAINED)
    assert retained["y"] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [row[0] for row in retained["customdata"]] == [3, 3, 3]
    low, high = band(payload, "attention", RETAINED)
    # 0/1 values: s1 mean 2/3, sd sqrt((2 - 4/3) / 2) = sqrt(1/3), half t2 * sqrt(1/3) / sqrt(3) = t2 / 3.
    assert (low[0], high[0]) == pytest.approx((1.0, 1.0))
    assert (low[1], high[1]) == pytest.approx((2 / 3 - T2 / 3, 2 / 3 + T2 / 3), abs=1e-6)
    summary = {row["country"]: row for row in payload["summary"]}
    # Retained through the whole ad: P3 only. Mean attention over the ad: P1 0.5, P2 2/3, P3 0.75.
    assert summary["All"]["retained_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["DE"]["retained_share"] == 0 and summary["US"]["retained_share"] == 1
    assert summary["All"]["mean_attention"] == pytest.approx((0.5 + 2 / 3 + 0.75) / 3, abs=1e-4)
    assert summary["DE"]["mean_attention"] == pytest.approx((0.5 + 2 / 3) / 2, abs=1e-4)
    assert summary["All"]["attention_participants"] == 3 and summary["All"]["participants"] == 3


def test_a_participant_without_any_face_attends_nothing_and_has_no_reading(acme, three_second_ad):
    writer = FrameWriter(new_participant(acme.study, "JP"))
    store_results(frames(writer, three_second_ad, 0, ["no face", "no face"]))
    payload = build_ad_dashboard(three_second_ad, parse_filters({}))
    assert figure_trace(payload, "attention", "Attention")["y"][0] == 0.0
    assert figure_trace(payload, "attention", RETAINED)["y"] == [0.0, 0.0, 0.0]
    assert figure_trace(payload, "trace", "Smile")["y"][0] is None
    assert payload["totals"]["participants"] == 0  # participants with a reading
    assert payload["summary"][0]["attention_participants"] == 1


@pytest.fixture
def neutral_fixture(acme, three_second_ad):
    """p(neutral) per frame; expressiveness = 1 - p(neutral):

    P1: baseline 0.9 (-> 0.1) | s0: 0.8 (-> 0.2) | s1: 0.7, 0.3 (mean 0.5 -> 0.5)
    P2: baseline 0.5 (-> 0.5) | s0: 0.5 (-> 0.5) | s1: 0.4 (-> 0.6)
    P3: no baseline           | s0: 0.2 (-> 0.8) | s1: 0.1 (-> 0.9)
    """
    ad = three_second_ad
    writers = [FrameWriter(new_participant(acme.study, "DE")) for _ in range(3)]
    neutral = {
        0: {None: [0.9], 0: [0.8], 1: [0.7, 0.3]},
        1: {None: [0.5], 0: [0.5], 1: [0.4]},
        2: {0: [0.2], 1: [0.1]},
    }
    for index, writer in enumerate(writers):
        for second, values in neutral[index].items():
            for value in values:
                writer.store(ad if second is not None else None, second or 0, [0.1], neutral=value)
    return ad


def test_expressiveness_is_one_minus_neutral_with_participants_as_the_unit(neutral_fixture):
    payload = build_ad_dashboard(neutral_fixture, parse_filters({}))
    expressiveness = figure_trace(payload, "trace", "Expressiveness")
    neutral = figure_trace(payload, "trace", "Neutral")
    # s0: 0.2, 0.5, 0.8 -> mean 0.5, sd 0.3; s1: 0.5, 0.6, 0.9 -> mean 2/3, sd sqrt(0.0433...).
    assert expressiveness["y"][:2] == pytest.approx([0.5, 2 / 3])
    assert [1 - v for v in neutral["y"][:2]] == pytest.approx(expressiveness["y"][:2])
    assert [row[0] for row in expressiveness["customdata"][:2]] == [3, 3]
    low, high = band(payload, "trace", "Expressiveness")
    half0 = T2 * 0.3 / math.sqrt(3)
    sd1 = math.sqrt(((0.5 - 2 / 3) ** 2 + (0.6 - 2 / 3) ** 2 + (0.9 - 2 / 3) ** 2) / 2)
    half1 = T2 * sd1 / math.sqrt(3)
    assert half0 == pytest.approx(0.745241, abs=1e-6)
    assert low[:2] == pytest.approx([0.5 - half0, 2 / 3 - half1], abs=1e-6)
    assert high[:2] == pytest.approx([0.5 + half0, 2 / 3 + half1], abs=1e-6)
    # The per-participant mean over the ad: P1 (0.2 + 0.5) / 2 = 0.35, P2 0.55, P3 0.85 -> mean 0.5833,
    # sd 0.251661, upper end 0.5833 + t2 * 0.251661 / sqrt(3) = 1.208494.
    summary = payload["summary"][0]
    assert summary["mean_expressiveness"] == pytest.approx(0.5833, abs=1e-4)
    assert summary["expressiveness_high"] == pytest.approx(1.2085, abs=1e-4)
    # It can be the compared measure too: the country chart then draws it.
    chosen = build_ad_dashboard(neutral_fixture, parse_filters({"measure": "expressiveness"}))
    assert ["expressiveness", "Expressiveness"] in chosen["options"]["measures"]
    assert chosen["figures"]["countries"]["layout"]["yaxis"]["title"]["text"] == "Expressiveness"


def test_baseline_corrected_expressiveness_is_minus_the_corrected_neutral(neutral_fixture):
    payload = build_ad_dashboard(neutral_fixture, parse_filters({"baseline": "1"}))
    expressiveness = figure_trace(payload, "trace", "Expressiveness")
    # P3 has no baseline. s0: P1 0.2 - 0.1 = 0.1, P2 0.5 - 0.5 = 0 -> 0.05, sd sqrt(0.005), half t1 * 0.05.
    assert expressiveness["y"][0] == pytest.approx(0.05)
    assert expressiveness["customdata"][0][0] == 2
    low, high = band(payload, "trace", "Expressiveness")
    assert (low[0], high[0]) == pytest.approx((0.05 - T1 * 0.05, 0.05 + T1 * 0.05), abs=1e-6)
    # s1: P1 0.5 - 0.1 = 0.4, P2 0.6 - 0.5 = 0.1 -> 0.25.
    assert expressiveness["y"][1] == pytest.approx(0.25)


def test_a_model_without_a_neutral_label_has_no_expressiveness(acme, three_second_ad):
    labels = tuple(label for label in READING_LABELS if label != "neutral")
    writer = FrameWriter(new_participant(acme.study, "DE"))
    writer.store(three_second_ad, 0, [0.4, 0.6], labels=labels)
    payload = build_ad_dashboard(three_second_ad, parse_filters({}))
    names = {trace["name"] for trace in payload["figures"]["trace"]["data"]}
    assert "Smile" in names and "Expressiveness" not in names and "Neutral" not in names
    assert ParticipantAdSummary.objects.get(level=0).mean_expressiveness is None


# ---- incremental = rebuild = plain Python, for the attention columns -------------------------------------


def reference_attention(study) -> tuple[dict, dict]:
    """(attention cell statistics per cell key at level 0, retained_seconds per (session, ad, model))."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for frame in FrameResult.objects.filter(session__study=study, error="", ad__isnull=False):
        entry = counts[(frame.session_id, frame.ad_id, frame.media_time_ms // 1000, frame.model_version)]
        entry[0] += 1
        entry[1] += frame.face_found and frame.attending is not False
    sessions = {session.pk: session for session in ParticipantSession.objects.filter(study=study)}
    cells: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(3))
    per_participant: dict[tuple, list] = defaultdict(list)
    for (session_id, ad_id, second, model), (analysed, attending) in counts.items():
        share = attending / analysed
        session = sessions[session_id]
        key = (ad_id, model, second, session.country, session.device_type, session.created_at.date())
        cells[key] += np.array([1.0, share, share * share])
        per_participant[(session_id, ad_id, model)].append((second, share))
    retained = {}
    for key, seconds in per_participant.items():
        seconds.sort()
        lost = [second for second, share in seconds if share < ATTENTION_THRESHOLD]
        retained[key] = lost[0] if lost else seconds[-1][0] + 1
    return dict(cells), retained


def stored_state(study) -> tuple[dict, dict]:
    keys = ["ad_id", "level", "model_version", "second", "country", "device_type", "completed", "day"]
    cells = {
        tuple(row[:8]): np.array(row[8:], dtype=float)
        for row in SecondCell.objects.filter(ad__study=study).values_list(*keys, *cell_value_columns())
    }
    summaries = {
        tuple(row[:4]): row[4:]
        for row in ParticipantAdSummary.objects.filter(ad__study=study).values_list(
            "session_id", "ad_id", "level", "model_version", *SUMMARY_FIELDS
        )
    }
    return cells, summaries


def test_incremental_attention_rollups_equal_raw_frames_and_the_rebuild(acme, three_second_ad):
    rng = random.Random(11)
    batches = []
    for country in ("DE", "US", "DE", "JP"):
        writer = FrameWriter(new_participant(acme.study, country))
        rows = frames(writer, None, 0, [rng.choice([True, False, None, "no face"]) for _ in range(3)])
        for ad in (acme.ad, three_second_ad):
            for second in range(3):
                if rng.random() < 0.15:
                    continue  # a second without frames
                choices = [True, True, True, False, None, "no face", "error"]
                rows += frames(
                    writer,
                    ad,
                    second,
                    [rng.choice(choices) for _ in range(rng.randint(1, 4))],
                    quality=rng.uniform(0.0, 1.0),
                    neutral=rng.uniform(0.0, 1.0),
                )
        batches += [rows[start : start + 4] for start in range(0, len(rows), 4)]
    rng.shuffle(batches)
    for batch in batches + rng.sample(batches, 5):  # some delivered twice
        store_results(batch)

    incremental_cells, incremental_summaries = stored_state(acme.study)
    expected_cells, expected_retained = reference_attention(acme.study)
    attention = [cell_value_columns().index(c) for c in ("n_attention", "s_attention", "q_attention")]
    for level in range(len(QUALITY_LEVELS)):
        got = {
            (ad, model, second, country, device, day): vector[attention]
            for (ad, lv, model, second, country, device, _completed, day), vector in incremental_cells.items()
            if lv == level and vector[attention[0]] > 0
        }
        assert got.keys() == expected_cells.keys()
        for key, vector in expected_cells.items():
            np.testing.assert_allclose(got[key], vector, rtol=1e-9, atol=1e-12, err_msg=str(key))
    for (session_id, ad_id, _level, model), values in incremental_summaries.items():
        assert values[-1] == expected_retained[(session_id, ad_id, model)]

    do_rebuild_rollups()
    rebuilt_cells, rebuilt_summaries = stored_state(acme.study)
    nonzero = {key for key, vector in incremental_cells.items() if vector.any()}
    assert {key for key, vector in rebuilt_cells.items() if vector.any()} == nonzero
    for key in nonzero:
        np.testing.assert_allclose(rebuilt_cells[key], incremental_cells[key], rtol=1e-9, atol=1e-12)
    assert rebuilt_summaries.keys() == incremental_summaries.keys()
    for key, values in rebuilt_summaries.items():
        assert values == pytest.approx(incremental_summaries[key], abs=1e-12), key

    traces = load_traces(three_second_ad, parse_filters({}), "test-model-1")
    assert np.isfinite(traces.estimate("attention", False).mean).any()


# ---- the worker's path: pose and attention stored per frame, counted by the rollups -----------------------


def test_analysed_frames_store_their_pose_and_the_rollups_count_them(acme, face_jpegs):
    session = new_participant(acme.study, "DE")
    ok, blank = cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))
    jpegs = [*face_jpegs[:4], blank.tobytes(), b"not a jpeg"]
    queued = [
        Frame(seq, acme.ad.pk, 100 + seq * 150, 1_700_000_000_000 + seq * 150, jpeg).queued(session.pk)
        for seq, jpeg in enumerate(jpegs)
    ]
    assert ok and analyze_and_store_frames(queued) == 6
    rows = list(FrameResult.objects.filter(session=session).order_by("seq"))
    faces, empty, broken = rows[:4], rows[4], rows[5]
    assert all(row.face_found and row.attending is True for row in faces)
    assert all(abs(row.face_yaw) <= 30 and -25 <= row.face_pitch <= 20 for row in faces)
    assert not empty.face_found and empty.attending is None and empty.face_yaw is None
    assert broken.error
    # Second 0 holds all six frames: five analysed (the undecodable one is not), four of them attending.
    rollup = SecondRollup.objects.get(session=session, level=0, second=0)
    assert (rollup.n_frames, rollup.n_analysed, rollup.n_attending) == (4, 5, 4)
    cell = SecondCell.objects.get(ad=acme.ad, level=0, second=0)
    assert (cell.n_attention, cell.s_attention) == (1, pytest.approx(0.8))
