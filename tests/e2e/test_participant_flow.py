"""End to end: headless Debian Chromium with a fake webcam of a real face, through a participant link,
against a real daphne server, Redis, a Celery worker and Postgres. The readings must land in Postgres."""

from __future__ import annotations

import pytest

from inference.model import EmotionModel
from inference.resources import REPO_ROOT, default_model_path
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import READING_LABELS
from tests.e2e.conftest import walk_through_study
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts"


def wait_for_rows(session: ParticipantSession, expected: int, timeout: float = 60) -> list[FrameResult]:
    return eventually(
        lambda: list(FrameResult.objects.filter(session=session).order_by("seq")),
        until=lambda rows: len(rows) >= expected,
        timeout_s=timeout,
        interval_s=0.5,
    )


def test_participant_link_to_stored_readings(acme, celery_worker, asgi_server, browser):
    acme.study.redirect_complete_url = f"{asgi_server}/panel-return/?status=complete&pid={{pid}}"
    acme.study.save()
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    walk_through_study(
        page,
        f"{asgi_server}/s/{acme.study.public_id}/?pid=e2e-1&c=DE",
        ARTIFACTS / "desktop",
        end_url_glob="**/panel-return/?status=complete&pid=e2e-1",
        resend_after_ms=6000,  # the test servers' CAPTURE_RESEND_AFTER_S, not capture.js's built-in 5 s
    )

    session = ParticipantSession.objects.get(external_participant_id="e2e-1")
    assert session.state == "completed" and session.country == "DE" and session.consent_at is not None
    assert session.checks_passed_at is not None
    baseline = list(FrameResult.objects.filter(session=session, ad=None))
    assert len(baseline) >= 15 and sum(row.face_found for row in baseline) >= 0.8 * len(baseline)
    # A 4 s ad at 5 fps: about 20 frames, every one acked before the page moved on.
    rows = wait_for_rows(session, 15)
    rows = [row for row in rows if row.ad_id is not None]
    assert len(rows) >= 15, celery_worker.log()[-3000:]
    assert len({row.seq for row in rows}) == len(rows)
    faces = [row for row in rows if row.face_found]
    assert len(faces) >= 0.8 * len(rows)
    media_times = [row.media_time_ms for row in rows]
    assert min(media_times) <= 1000 and max(media_times) >= acme.ad.duration_ms - 1000
    assert {row.ad_id for row in rows} == {acme.ad.pk}
    assert all(row.model_version and row.error == "" for row in rows)
    assert all(row.smile == row.happy and -1 <= row.valence <= 1 and 0 <= row.quality <= 1 for row in faces)
    labels = EmotionModel(default_model_path()).labels  # what the worker serves
    for row in faces:
        assert {label for label in READING_LABELS if getattr(row, label) is not None} == set(labels)
        assert abs(sum(getattr(row, label) for label in labels) - 1) < 1e-3
