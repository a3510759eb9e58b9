"""Rollups stay consistent with the raw frames: batches in any order, re-delivered batches, late baselines,
mixed model versions, sessions that complete, change without a signal, fail to update, or are deleted; and the
incremental path agrees with the set-based rebuild."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from research_portal.analytics import rollups
from research_portal.analytics.dashboard import build_ad_dashboard
from research_portal.analytics.definitions import MEASURES, QUALITY_LEVELS, SMILE_THRESHOLD, cell_columns
from research_portal.analytics.models import (
    ParticipantAdSummary,
    SecondCell,
    SecondRollup,
    SessionRollup,
)
from research_portal.analytics.rollups import do_rebuild_rollups, do_refresh_session
from research_portal.analytics.services import parse_filters
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.storage import store_results
from research_portal.studies.models import Ad
from tests.support.readings import FrameWriter, new_participant, reading

# ---- a reference computed straight from raw frames, in plain Python ---------------------------------------


def reference(study) -> tuple[dict, dict]:
    """(cells, summaries) exactly as defined in docs/analytics.md, from FrameResult rows."""
    sums: dict[tuple, list] = defaultdict(lambda: [0, 0] + [0.0] * len(MEASURES))
    for frame in FrameResult.objects.filter(session__study=study, face_found=True, error=""):
        for level, threshold in enumerate(QUALITY_LEVELS):
            if level > 0 and (frame.quality is None or frame.quality < threshold):
                continue
            second = None if frame.ad_id is None else frame.media_time_ms // 1000
            entry = sums[(frame.session_id, frame.ad_id, second, level, frame.model_version)]
            entry[0] += 1
            entry[1] += frame.valence is not None
            for index, measure in enumerate(MEASURES):
                value = getattr(frame, measure)
                entry[2 + index] += 0.0 if value is None else value

    def means(entry) -> list[float | None]:
        out = []
        for index, measure in enumerate(MEASURES):
            count = entry[1] if measure == "valence" else entry[0]
            out.append(entry[2 + index] / count if count else None)
        return out

    sessions = {s.pk: s for s in ParticipantSession.objects.filter(study=study)}
    cells: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(1 + len(cell_columns())))
    per_participant: dict[tuple, list] = defaultdict(list)
    for (session_id, ad_id, second, level, model), entry in sums.items():
        if ad_id is None:
            continue
        session = sessions[session_id]
        base_entry = sums.get((session_id, None, None, level, model))
        base = means(base_entry) if base_entry else [None] * len(MEASURES)
        mine = means(entry)
        key = (ad_id, level, model, second, session.country, session.device_type,
               session.state == "completed", session.created_at.date())  # fmt: skip
        vector = [1.0]
        for value, baseline in zip(mine, base, strict=True):
            corrected = None if value is None or baseline is None else value - baseline
            for v in (value, corrected):
                vector += [0.0, 0.0, 0.0] if v is None else [1.0, v, v * v]
        cells[key] += np.array(vector)
        per_participant[(session_id, ad_id, level, model)].append((mine, base, entry[0]))
    summaries = {}
    smile, valence = MEASURES.index("smile"), MEASURES.index("valence")
    for key, seconds in per_participant.items():
        valences = [m[valence] for m, _b, _n in seconds if m[valence] is not None]
        smiles = [m[smile] for m, _b, _n in seconds]
        summaries[key] = {
            "n_seconds": len(seconds),
            "n_frames": sum(n for _m, _b, n in seconds),
            "mean_valence": float(np.mean(valences)) if valences else None,
            "peak_smile": max(smiles),
            "smiled": max(smiles) >= SMILE_THRESHOLD,
        }
    # Every participant with an analysed frame in an ad has a summary at every level, with n_seconds 0 where
    # no frame had a usable face (the retention curve counts them; docs/analytics.md, "Attention").
    for frame in FrameResult.objects.filter(session__study=study, error="", ad__isnull=False):
        for level in range(len(QUALITY_LEVELS)):
            summaries.setdefault(
                (frame.session_id, frame.ad_id, level, frame.model_version),
                {"n_seconds": 0, "n_frames": 0, "mean_valence": None, "peak_smile": None, "smiled": False},
            )
    return dict(cells), summaries


def stored_cells(study) -> dict[tuple, np.ndarray]:
    columns = ["participants", *cell_columns()]
    rows = SecondCell.objects.filter(ad__study=study, participants__gt=0).values_list(
        "ad_id", "level", "model_version", "second", "country", "device_type", "completed", "day", *columns
    )
    return {tuple(row[:8]): np.array(row[8:], dtype=float) for row in rows}


def stored_summaries(study) -> dict[tuple, dict]:
    return {
        (s.session_id, s.ad_id, s.level, s.model_version): {
            "n_seconds": s.n_seconds,
            "n_frames": s.n_frames,
            "mean_valence": s.mean_valence,
            "peak_smile": s.peak_smile,
            "smiled": s.smiled,
        }
        for s in ParticipantAdSummary.objects.filter(ad__study=study)
    }


def assert_matches_reference(study) -> None:
    expected_cells, expected_summaries = reference(study)
    cells = stored_cells(study)
    assert cells.keys() == expected_cells.keys()
    for key, vector in expected_cells.items():
        np.testing.assert_allclose(cells[key], vector, rtol=1e-9, atol=1e-9, err_msg=str(key))
    summaries = stored_summaries(study)
    assert summaries.keys() == expected_summaries.keys()
    for key, expected in expected_summaries.items():
        got = summaries[key]
        assert got["n_seconds"] == expected["n_seconds"] and got["n_frames"] == expected["n_frames"], key
        assert got["smiled"] == expected["smiled"], key
        assert got["peak_smile"] == pytest.approx(expected["peak_smile"], abs=1e-9)
        if expected["mean_valence"] is None:
            assert got["mean_valence"] is None
        else:
            assert got["mean_valence"] == pytest.approx(expected["mean_valence"], abs=1e-9)


# ---- scenario ----------------------------------------------------------------------------------------------


def random_frames(rng: random.Random, writer: FrameWriter, ad, seconds: int, model: str = "m1", valence=True):
    rows = []
    for second in range(seconds):
        for _ in range(5):
            if rng.random() < 0.1:
                rows += writer.frames(ad, second, [None], model=model)
                continue
            smile = rng.uniform(0.0, 1.0)
            quality = None if rng.random() < 0.05 else rng.uniform(0.0, 1.0)
            kwargs = {} if valence else {"valence": None}
            rows += writer.frames(ad, second, [smile], quality=quality, model=model, **kwargs)
    return rows


def in_batches(rng: random.Random, rows: list) -> list[list]:
    batches, start = [], 0
    while start < len(rows):
        size = rng.randint(3, 9)
        batches.append(rows[start : start + size])
        start += size
    return batches


@pytest.fixture
def second_ad(acme):
    return Ad.objects.create(study=acme.study, title="Second ad", duration_ms=3000, position=1)


def test_incremental_rollups_equal_raw_frames_and_the_rebuild(
    acme, second_ad, inline_refresh, django_capture_on_commit_callbacks
):
    rng = random.Random(5)
    countries = ["DE", "US", "JP", "DE", "US", "DE"]
    devices = [rng.choice(["desktop", "mobile"]) for _ in countries]
    sessions = [new_participant(acme.study, c, device=d) for c, d in zip(countries, devices, strict=True)]
    deliveries: list[list] = []
    for index, session in enumerate(sessions):
        writer = FrameWriter(session)
        baseline = random_frames(rng, writer, None, 2, valence=index != 3)
        first = random_frames(rng, writer, acme.ad, 4, valence=index != 3)
        # Session 4's second ad was read by another model version (an upgrade mid-study).
        model = "m2" if index == 4 else "m1"
        second = random_frames(rng, writer, second_ad, 3, model=model, valence=index != 3)
        batches = in_batches(rng, baseline) + in_batches(rng, first) + in_batches(rng, second)
        if index == 1:
            batches = batches[2:] + batches[:2]  # baseline arrives after the ad frames
        deliveries += batches
    rng.shuffle(deliveries)
    # Re-deliveries (a worker killed after its insert): some batches again, later, one merged across sessions.
    deliveries += rng.sample(deliveries, 12)
    deliveries.append(deliveries[0] + deliveries[1])
    for batch in deliveries:
        store_results(batch)
    assert_matches_reference(acme.study)

    # Completion (post_save signal -> inline refresh), a change without a signal, and a deletion.
    with django_capture_on_commit_callbacks(execute=True):
        sessions[0].state = ParticipantSession.State.COMPLETED
        sessions[0].save(update_fields=["state"])
    assert SessionRollup.objects.get(pk=sessions[0].pk).completed
    ParticipantSession.objects.filter(pk=sessions[5].pk).update(state="completed", device_type="tablet")
    assert rollups.stale_session_ids(acme.study.pk) == [sessions[5].pk]
    sessions[2].delete()
    build_ad_dashboard(acme.ad, parse_filters({}))  # reads only
    assert rollups.stale_session_ids(acme.study.pk) == [sessions[5].pk]
    assert rollups.do_reconcile_due_studies() == 1  # the periodic reconcile re-files it
    assert rollups.stale_session_ids(acme.study.pk) == []
    assert_matches_reference(acme.study)

    incremental = stored_cells(acme.study)
    counts = do_rebuild_rollups()
    assert counts[SecondCell._meta.db_table] > 0
    assert_matches_reference(acme.study)
    rebuilt = stored_cells(acme.study)
    assert rebuilt.keys() == incremental.keys()
    for key in rebuilt:
        np.testing.assert_allclose(rebuilt[key], incremental[key], rtol=1e-9, atol=1e-9)


def test_redelivered_batch_changes_nothing(acme):
    session = new_participant(acme.study, "DE")
    rows = FrameWriter(session).frames(acme.ad, 0, [0.2, 0.4, 0.6])
    store_results(rows)
    before = list(SecondRollup.objects.values_list("level", "n_frames", "sum_smile").order_by("level"))
    assert before[0] == (0, 3, pytest.approx(1.2))
    result = do_refresh_session(session.pk, {(acme.ad.pk, 0)})
    assert result is not None and not result.changed
    store_results(FrameWriter(session).frames(acme.ad, 0, [0.2, 0.4, 0.6]))  # same seqs 0-2: skipped
    after = list(SecondRollup.objects.values_list("level", "n_frames", "sum_smile").order_by("level"))
    assert after == before
    assert SecondCell.objects.get(ad=acme.ad, level=0, second=0).participants == 1


def test_a_failed_update_marks_the_session_stale_and_the_next_reconcile_repairs_it(acme, monkeypatch):
    session = new_participant(acme.study, "US")
    writer = FrameWriter(session)
    writer.store(acme.ad, 0, [0.5])

    def broken(*args, **kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(rollups, "_recompute_rows", broken)
    assert store_results(writer.frames(acme.ad, 1, [0.7, 0.9])) == 2  # the frames are stored regardless
    assert SessionRollup.objects.get(pk=session.pk).stale
    monkeypatch.undo()
    build_ad_dashboard(acme.ad, parse_filters({}))
    assert SessionRollup.objects.get(pk=session.pk).stale  # a dashboard read changes nothing...
    assert rollups.do_reconcile_due_studies() == 1  # ...the periodic reconcile repairs it
    payload = build_ad_dashboard(acme.ad, parse_filters({}))
    smile = next(t for t in payload["figures"]["trace"]["data"] if t["name"] == "Smile")
    assert smile["y"][:2] == pytest.approx([0.5, 0.8])
    assert not SessionRollup.objects.get(pk=session.pk).stale
    assert_matches_reference(acme.study)


def test_frames_without_a_face_or_with_errors_do_not_count(acme):
    session = new_participant(acme.study, "DE")
    broken = reading(session, acme.ad, 10, 500, face=False)
    broken.error = "could not decode"
    store_results([broken, *FrameWriter(session).frames(acme.ad, 0, [None, 0.4])])
    cell = SecondCell.objects.get(ad=acme.ad, level=0, second=0)
    assert cell.participants == 1 and cell.n_smile == 1 and cell.s_smile == pytest.approx(0.4)
    assert SecondRollup.objects.get(level=0).n_frames == 1
