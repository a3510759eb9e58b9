"""Completion: a validated complete needs every ad watched with enough usable frames."""

from datetime import timedelta

import pytest
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.validation import (
    MAX_VALIDATION_WAIT,
    check_ready_to_validate,
    do_finish_viewing,
    longest_run_without_face,
    session_outcome,
)

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
        completed_at=now - timedelta(minutes=1),
    )


def store_frames(session, ad, faces: list[bool], quality: float = 0.8):
    FrameResult.objects.bulk_create(
        FrameResult(
            session=session,
            ad=ad,
            seq=seq,
            media_time_ms=seq * 200,
            captured_at=timezone.now(),
            face_found=face,
            quality=quality if face else None,
            model_version="test",
        )
        for seq, face in enumerate(faces)
    )


def test_enough_usable_frames_make_a_validated_complete(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 18 + [False] * 2)
    assert session_outcome(viewed).state == "completed"


def test_too_few_usable_frames_fail_with_a_reason(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 8 + [False] * 12)
    session = session_outcome(viewed)
    assert session.state == "failed"
    assert session.exclusion_reason == "not enough usable frames: Spring ad: 8 usable of 20 expected frames"


def test_low_quality_faces_are_not_usable(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 20, quality=0.1)
    assert session_outcome(viewed).state == "failed"


def test_a_long_run_without_a_face_is_recorded(viewed, acme):
    store_frames(viewed, acme.ad, [True] * 3 + [False] * 16 + [True])
    session_outcome(viewed)
    event = SessionEvent.objects.get(session=viewed, name="face_lost")
    assert event.ad == acme.ad and event.detail == "3200 ms without a face"


def test_validation_waits_for_the_last_queued_frame(acme):
    now = timezone.now()
    session = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=now,
        completed_at=now,
        last_enqueued_seq=19,
        last_enqueued_at=now,
    )
    store_frames(session, acme.ad, [True] * 19)
    assert not check_ready_to_validate(session, now + timedelta(seconds=5))  # seq 19 not stored yet
    FrameResult.objects.create(
        session=session,
        ad=acme.ad,
        seq=19,
        media_time_ms=3800,
        captured_at=now,
        face_found=True,
        quality=0.9,
        model_version="test",
    )
    assert not check_ready_to_validate(session, now + timedelta(seconds=1))  # grace for batch-mates
    assert check_ready_to_validate(session, now + timedelta(seconds=3))
    assert check_ready_to_validate(session, now + MAX_VALIDATION_WAIT)


def test_a_lost_batch_cannot_hold_a_participant_forever(acme):
    past = timezone.now() - MAX_VALIDATION_WAIT - timedelta(seconds=1)
    session = ParticipantSession.objects.create(
        study=acme.study,
        state="viewing",
        ad_sequence=[acme.ad.pk],
        checks_passed_at=past,
        completed_at=past,
        last_enqueued_seq=99,
        last_enqueued_at=past,
    )
    assert session_outcome(session).state == "failed"


def test_finish_before_the_check_changes_nothing(acme):
    session = ParticipantSession.objects.create(study=acme.study, state="consented")
    do_finish_viewing(session)
    session.refresh_from_db()
    assert session.completed_at is None


def test_end_page_shows_the_outcome_and_the_complete_redirect(client, viewed, acme):
    acme.study.redirect_complete_url = "https://panel.example/c?id={pid}"
    acme.study.save()
    store_frames(viewed, acme.ad, [True] * 20)
    outcome = client.get(f"/p/{viewed.token}/outcome").json()
    assert outcome == {"state": "completed", "ended": True, "next": "https://panel.example/c?id=v-1"}
    page = client.get(f"/p/{viewed.token}/end/").content.decode()
    assert "You have finished this study" in page and "url=https://panel.example/c?id=v-1" in page


def test_longest_run_without_face():
    import numpy as np

    assert longest_run_without_face(np.array([True, False, False, True, False], bool)) == 2
    assert longest_run_without_face(np.array([True, True], bool)) == 0
    assert longest_run_without_face(np.zeros(0, bool)) == 0
