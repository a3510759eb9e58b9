"""The participant pages in Debian's Firefox ESR (driven over Marionette, Firefox's own automation port):
the camera check talks to the server, and viewing streams frames that land in Postgres."""

from __future__ import annotations

import shutil
import time

import pytest
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession
from tests.e2e.marionette import Firefox
from tests.support.processes import free_port
from tests.support.services import skip_or_fail

pytestmark = pytest.mark.e2e


@pytest.fixture
def firefox(tmp_path, monkeypatch):
    executable = shutil.which("firefox-esr") or shutil.which("firefox")
    if not executable:
        skip_or_fail("Debian's firefox-esr is not installed (`make test` installs it with apt-get)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    browser = Firefox(executable, tmp_path / "firefox-profile", free_port())
    yield browser
    browser.quit()


def test_firefox_runs_the_camera_check_and_streams_frames(acme, asgi_server, celery_worker, firefox):
    acme.study.baseline_seconds = 1
    acme.study.save()
    # The check: Firefox's fake camera shows a test pattern, so the server must answer "no face".
    checking = ParticipantSession.objects.create(
        study=acme.study, state="consented", ad_sequence=[acme.ad.pk]
    )
    firefox.navigate(f"{asgi_server}/p/{checking.token}/check/")
    firefox.script("document.getElementById('start-check').click()")
    problems = firefox.wait_for("return document.body.dataset.checkProblems", timeout_s=30)
    assert "no_face" in problems.split(",")
    assert "see your face" in firefox.script("return document.getElementById('feedback').textContent")

    # Viewing: baseline and ad play, frames go over the socket and are acked and stored.
    viewing = ParticipantSession.objects.create(
        study=acme.study, state="consented", ad_sequence=[acme.ad.pk], checks_passed_at=timezone.now()
    )
    firefox.navigate(f"{asgi_server}/p/{viewing.token}/watch/")
    firefox.script("document.getElementById('start').click()")
    firefox.wait_for("return location.pathname.endsWith('/end/')", timeout_s=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and FrameResult.objects.filter(session=viewing).count() < 15:
        time.sleep(0.5)
    rows = list(FrameResult.objects.filter(session=viewing))
    assert len(rows) >= 15
    assert {row.ad_id for row in rows} == {None, acme.ad.pk}  # baseline and ad frames
    assert max(row.media_time_ms for row in rows if row.ad_id) >= acme.ad.duration_ms - 1000
    viewing.refresh_from_db()
    assert viewing.viewing_ended_at is not None
