"""The camera check page's words for what happens between Start and the first answer, and after a pass; the
end page of a failed camera check, which says nothing was stored (nothing was: check frames are analysed and
dropped), unlike a session that failed after viewing."""

from __future__ import annotations

import pytest
from django.contrib.staticfiles import finders
from django.utils import timezone

from research_portal.capture.models import ParticipantSession

pytestmark = pytest.mark.django_db


def test_the_check_page_carries_the_interim_words_and_a_continue_link(client, acme):
    session = ParticipantSession.objects.create(study=acme.study, state="consented", ad_sequence=[acme.ad.pk])
    html = client.get(f"/p/{session.token}/check/").content.decode()
    assert 'data-starting="Starting camera…"' in html and 'data-checking="Checking…"' in html
    watch = f"/p/{session.token}/watch/"
    assert f'<a class="button primary" id="check-continue" href="{watch}" hidden>Continue</a>' in html


def test_check_js_says_starting_at_once_and_keeps_the_passed_message():
    source = open(finders.find("participant/check.js"), encoding="utf-8").read()
    attempt = source[source.index("async function runAttempt") :]
    # The first thing Start does (before getUserMedia and the 1 s rate measurement) is to say so.
    assert attempt.index("say(feedback.dataset.starting)") < attempt.index("await startCamera()")
    assert attempt.index("say(feedback.dataset.checking)") < attempt.index("await measureFps()")
    passed = source[source.index("function showPassed") : source.index("async function runAttempt")]
    assert "continueLink.hidden = false" in passed and "PASSED_PAUSE_MS" in passed
    assert "location.href = config.watchUrl;\n        return;" not in source  # no more leaving at once


def ended(acme, **fields) -> ParticipantSession:
    return ParticipantSession.objects.create(study=acme.study, state="failed", **fields)


def test_a_failed_camera_check_says_nothing_was_stored(client, acme):
    html = client.get(f"/p/{ended(acme).token}/end/").content.decode()
    assert "the camera check did not succeed, so the study ended before the video" in html
    assert "Nothing from your camera was stored." in html
    assert "could not record enough" not in html


def test_a_session_failed_after_viewing_keeps_its_words(client, acme):
    session = ended(acme, checks_passed_at=timezone.now(), exclusion_reason="too few usable frames")
    html = client.get(f"/p/{session.token}/end/").content.decode()
    assert "Unfortunately we could not record enough of your session to use it." in html
    assert "camera check did not succeed" not in html
