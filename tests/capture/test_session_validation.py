"""Completion: a validated complete needs every ad watched with enough usable frames. Validation is the
periodic do_validate_due_sessions (tests/capture/test_periodic_validation.py runs it the shipped ways)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.validation import (
    MAX_VALIDATION_WAIT,
    do_finish_viewing,
    do_validate_due_sessions,
    is_ready_to_validate,
    longest_run_without_face,
)
from tests.support.readings import reading

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewed(acme) -> ParticipantSession:
    """Viewing ended a minute ago for a 4 s ad at 5 fps: 20 frames expected, 12 usable needed."""
    now = timezone.now()
    return ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        external_participant_id="v-1",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=now,
        viewing_ended_at=now - timedelta(minutes=1),
    )


def validated(session: ParticipantSession) -> ParticipantSession:
    """The session after a run of the periodic validation."""
    do_validate_due_sessions()
    session.refresh_from_db()
    return session


def store_frames(session, ad, faces: list[bool], quality: float = 0.8):
    start = timezone.now()
    FrameResult.objects.bulk_create(
        reading(session, ad, seq, seq * 200, face=face, quality=quality, model="test", start=start)
        for seq, face in enumerate(faces)
    )


def test_enough_usable_frames_make_a_validated_complete(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 18 + [False] * 2)
    assert validated(viewed).state == "completed"


def test_too_few_usable_frames_fail_with_a_reason(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 8 + [False] * 12)
    session = validated(viewed)
    assert session.state == "failed"
    assert session.exclusion_reason == "not enough usable frames: Spring ad: 8 usable of 20 expected frames"


def test_low_quality_faces_are_not_usable(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 20, quality=0.1)
    assert validated(viewed).state == "failed"


def test_a_long_run_without_a_face_is_recorded(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 3 + [False] * 16 + [True])
    validated(viewed)
    event = SessionEvent.objects.get(session=viewed, name="face_lost")
    assert event.ad == acme.ad and event.detail == "3.2 s without a face"


def test_validation_waits_for_the_last_queued_frame(acme):
    now = timezone.now()
    session = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=now,
        viewing_ended_at=now,
        last_enqueued_seq=19,
        last_enqueued_at=now,
    )
    store_frames(session, acme.ad, [True] * 19)
    assert not is_ready_to_validate(session, now + timedelta(seconds=5))  # seq 19 not stored yet
    reading(session, acme.ad, 19, 3800, model="test", start=now).save()
    assert not is_ready_to_validate(session, now + timedelta(seconds=1))  # grace for batch-mates
    assert is_ready_to_validate(session, now + timedelta(seconds=3))
    assert is_ready_to_validate(session, now + MAX_VALIDATION_WAIT)


def test_a_lost_batch_cannot_hold_a_participant_forever(acme):
    past = timezone.now() - MAX_VALIDATION_WAIT - timedelta(seconds=1)
    session = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=past,
        viewing_ended_at=past,
        last_enqueued_seq=99,
        last_enqueued_at=past,
    )
    assert validated(session).state == "failed"


def test_finish_before_the_check_changes_nothing(acme):
    session = ParticipantSession.objects.create(study=acme.study, state="consented")
    do_finish_viewing(session)
    session.refresh_from_db()
    assert session.viewing_ended_at is None


def test_end_page_shows_the_outcome_and_the_complete_redirect(client, viewed, acme):
    acme.study.redirect_complete_url = "https://panel.example/c?id={pid}"
    acme.study.save()
    store_frames(viewed, acme.ad, [True] * 20)
    pending = client.get(f"/p/{viewed.token}/outcome").json()
    assert pending == {"state": "viewing", "ended": False, "next": ""}  # the poll only reads
    assert "Saving your session" in client.get(f"/p/{viewed.token}/end/").content.decode()
    validated(viewed)
    outcome = client.get(f"/p/{viewed.token}/outcome").json()
    assert outcome == {"state": "completed", "ended": True, "next": "https://panel.example/c?id=v-1"}
    page = client.get(f"/p/{viewed.token}/end/").content.decode()
    assert "You have finished this study" in page and "url=https://panel.example/c?id=v-1" in page


def test_longest_run_without_face():
    import numpy as np

    assert longest_run_without_face(np.array([True, False, False, True, False], bool)) == 2
    assert longest_run_without_face(np.array([True, True], bool)) == 0
    assert longest_run_without_face(np.zeros(0, bool)) == 0


def test_a_finished_session_is_validated_once_its_last_reading_is_in(acme):
    now = timezone.now()
    session = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=now,
        viewing_ended_at=now,
        last_enqueued_seq=19,
        last_enqueued_at=now,
    )
    store_frames(session, acme.ad, [True] * 19)
    assert do_validate_due_sessions(now + timedelta(seconds=5)) == 0  # seq 19 is not stored yet
    reading(session, acme.ad, 19, 3800, model="test", start=now).save()
    assert do_validate_due_sessions(now + timedelta(seconds=3)) == 1
    session.refresh_from_db()
    assert session.state == "completed"
    assert do_validate_due_sessions(now + timedelta(seconds=4)) == 0  # validated once


def test_a_session_abandoned_mid_viewing_ends_failed_and_one_still_watching_carries_on(acme):
    from research_portal.capture.validation import ABANDONED_AFTER

    now = timezone.now()
    long_ago = now - ABANDONED_AFTER - timedelta(minutes=10)

    def viewer(pid: str, last_frame_at, **fields) -> ParticipantSession:
        return ParticipantSession.objects.create(
            study=acme.study,
            state="viewing",
            external_participant_id=pid,
            ad_sequence=[acme.ad.pk],
            checks_passed_at=long_ago,
            last_enqueued_seq=None if last_frame_at is None else 7,
            last_enqueued_at=last_frame_at,
            **fields,
        )

    gone = viewer("gone", now - ABANDONED_AFTER - timedelta(seconds=1))
    gone_before_a_frame = viewer("no-frame", None)
    watching = viewer("watching", now - timedelta(minutes=2))
    never_checked = ParticipantSession.objects.create(study=acme.study, state="consented")
    ParticipantSession.objects.filter(pk=never_checked.pk).update(created_at=long_ago)

    assert do_validate_due_sessions(now) == 2
    for session in (gone, gone_before_a_frame):
        session.refresh_from_db()
        assert session.state == "failed"
        assert session.exclusion_reason == "abandoned: viewing never ended, no frame for 30 minutes"
    watching.refresh_from_db()
    never_checked.refresh_from_db()
    assert (watching.state, never_checked.state) == ("viewing", "consented")


def test_a_session_that_cannot_be_validated_holds_up_no_other(acme, viewed, monkeypatch, caplog):
    from research_portal.capture import validation

    other = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        external_participant_id="v-2",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=viewed.checks_passed_at,
        viewing_ended_at=viewed.viewing_ended_at,
    )
    store_frames(viewed, acme.ad, [True] * 20)
    original = validation.ad_usability_failures

    def broken_for_the_first(session):
        if session.pk == viewed.pk:
            raise ValueError("a bug")
        return original(session)

    monkeypatch.setattr(validation, "ad_usability_failures", broken_for_the_first)
    assert do_validate_due_sessions() == 1
    assert validated(other).state == "failed"  # its own outcome: no frames
    viewed.refresh_from_db()
    assert viewed.state == "viewing" and "could not be validated" in caplog.text
    monkeypatch.undo()
    assert validated(viewed).state == "completed"  # the next run takes it


def test_the_end_page_and_its_poll_never_write(client, viewed, acme):
    """Not even for a session due for validation: /outcome and /end/ only read, and show it pending."""
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    store_frames(viewed, acme.ad, [True] * 20)
    for url in (f"/p/{viewed.token}/outcome", f"/p/{viewed.token}/end/"):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, url
        writes = [
            query["sql"]
            for query in queries.captured_queries
            if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", query["sql"], re.IGNORECASE)
            or "FOR UPDATE" in query["sql"].upper()
        ]
        assert writes == [], url
    viewed.refresh_from_db()
    assert viewed.state == "viewing" and not SessionEvent.objects.filter(session=viewed).exists()
