"""Participant journeys in headless Chromium beyond the happy path: a dark room failing the face check on a
phone-sized screen, a camera that stops mid-ad, and the same session opened in a second tab."""

from __future__ import annotations

import pytest

from inference.resources import REPO_ROOT
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from tests.e2e.conftest import screenshot
from tests.support.processes import free_port
from tests.support.services import service_env, start_daphne

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts"
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def quick_study(acme, asgi_server):
    """The Spring campaign with a short baseline and quick check attempts, sending people back to a panel."""
    study = acme.study
    study.baseline_seconds = 1
    study.max_check_attempts = 2
    study.check_attempt_seconds = 4
    # These journeys are about events, not frame quality: a loaded CI machine may capture fewer frames.
    study.min_usable_frame_ratio = 0.3
    for outcome in ("complete", "failed", "declined", "over_quota"):
        setattr(study, f"redirect_{outcome}_url", f"{asgi_server}/panel-return/?status={outcome}&pid={{pid}}")
    study.save()
    return study


def start_viewing(page, asgi_server: str, study, pid: str) -> None:
    page.goto(f"{asgi_server}/s/{study.public_id}/?pid={pid}&c=US")
    page.click("#accept")
    page.click("#start-check")
    page.wait_for_url("**/watch/", timeout=30_000)
    page.click("#start")
    page.wait_for_selector("#ad:not([hidden])", timeout=15_000)


def test_dark_room_fails_the_check_with_words_then_the_failed_redirect(
    quick_study, asgi_server, launch_browser, dark_camera
):
    page = launch_browser(dark_camera).new_page(viewport=PHONE)
    page.goto(f"{asgi_server}/s/{quick_study.public_id}/?pid=dark-1&c=US")
    screenshot(page, ARTIFACTS / "phone", "1-consent")
    page.click("#accept")
    page.click("#start-check")
    page.wait_for_function("(document.body.dataset.checkProblems || '').length > 0", timeout=15_000)
    feedback = page.text_content("#feedback")
    screenshot(page, ARTIFACTS / "phone", "2-check-too-dark")
    page.wait_for_selector("#start-check:not([hidden])", timeout=15_000)  # first attempt timed out
    screenshot(page, ARTIFACTS / "phone", "3-check-try-again")
    page.click("#start-check")
    page.wait_for_url("**/panel-return/?status=failed&pid=dark-1", timeout=30_000)

    assert "too dark" in feedback or "can't see your face" in feedback
    session = ParticipantSession.objects.get(external_participant_id="dark-1")
    assert session.state == "failed" and session.checks_passed_at is None
    assert session.exclusion_reason.startswith("device/face check failed")
    assert SessionEvent.objects.filter(session=session, name="check_failed").count() == 2


def test_camera_stopping_mid_ad_pauses_until_resumed(quick_study, asgi_server, celery_worker, browser):
    page = browser.new_page()
    start_viewing(page, asgi_server, quick_study, "cam-1")
    page.wait_for_function("document.getElementById('ad').currentTime > 0.5")
    # What the browser fires when a webcam is unplugged or taken by another program.
    page.evaluate(
        "document.getElementById('camera').srcObject.getVideoTracks()[0].dispatchEvent(new Event('ended'))"
    )
    page.wait_for_selector("#resume:not([hidden])")
    assert "camera stopped" in page.text_content("#status")
    assert page.evaluate("document.getElementById('ad').paused")
    screenshot(page, ARTIFACTS / "desktop", "6-camera-stopped")
    page.click("#resume")
    page.wait_for_url("**/panel-return/?status=complete&pid=cam-1", timeout=60_000)

    session = ParticipantSession.objects.get(external_participant_id="cam-1")
    assert session.state == "completed"
    names = list(SessionEvent.objects.filter(session=session).values_list("name", flat=True))
    assert names[:2] == ["camera_stopped", "camera_resumed"]


def test_second_tab_takes_over_and_the_first_says_so(quick_study, asgi_server, celery_worker, browser):
    context = browser.new_context()
    first = context.new_page()
    start_viewing(first, asgi_server, quick_study, "tabs-1")
    second = context.new_page()
    second.goto(first.url)
    second.click("#start")
    first.wait_for_function("document.body.dataset.stoppedForOtherTab === 'true'", timeout=10_000)
    assert "open in another window" in first.text_content("#status")
    screenshot(first, ARTIFACTS / "desktop", "7-other-tab")
    second.wait_for_url("**/panel-return/?status=complete&pid=tabs-1", timeout=60_000)

    session = ParticipantSession.objects.get(external_participant_id="tabs-1")
    assert session.state == "completed"
    assert SessionEvent.objects.filter(session=session, name="other_tab").exists()


def test_a_network_drop_mid_ad_loses_no_frame(
    quick_study, postgres, redis_url, celery_worker, browser, tmp_path
):
    """The server goes away for a few seconds mid-ad: the page keeps its frames, reconnects, resends them,
    and every frame it grabbed is stored exactly once."""
    port = free_port()
    env = service_env(postgres, redis_url)
    server = start_daphne(env, port, tmp_path / "daphne-1.log")
    base = f"http://127.0.0.1:{port}"
    quick_study.redirect_complete_url = f"{base}/panel-return/?status=complete&pid={{pid}}"
    quick_study.save()
    page = browser.new_page()
    try:
        start_viewing(page, base, quick_study, "drop-1")
        page.wait_for_function("document.getElementById('ad').currentTime > 0.5")
        server.stop()
        sent_before = int(page.evaluate("document.body.dataset.framesSent"))
        page.wait_for_function(f"Number(document.body.dataset.framesSent) >= {sent_before + 5}")
        server = start_daphne(env, port, tmp_path / "daphne-2.log")
        page.wait_for_url("**/panel-return/?status=complete&pid=drop-1", timeout=60_000)
    finally:
        server.stop()

    session = ParticipantSession.objects.get(external_participant_id="drop-1")
    seqs = sorted(FrameResult.objects.filter(session=session).values_list("seq", flat=True))
    assert session.state == "completed"
    assert seqs == list(range(len(seqs))), "a frame grabbed during the outage was lost"
