"""Unplayable ads, the participant side (docs/security.md, L9), in headless Chromium against daphne, a
Celery worker, Redis and Postgres: an ad the browser cannot play never leaves the participant stuck.

A study launched before uploads were checked may hold an ad in a codec browsers do not play (MPEG-4 Part 2,
`mp4v`, stored here directly in the database as such a study would have it). The watch page says so in the
participant's language, reports it over the capture socket, the session ends Failed (`ad_unplayable`,
naming the ad) and the browser lands on the study's Failed redirect via the end page. A play() refused
because autoplay is blocked is not that: the page asks for a press of Play and the study goes on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.files import File
from django.utils import translation
from django.utils.translation import gettext

from inference.resources import REPO_ROOT
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.studies.models import Ad
from research_portal.studies.services import check_playable, probe_video
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts" / "unplayable"
# Every text the watch page's status line shows, recorded as it changes (the page moves on right after the
# unplayable message, so polling for it could miss it).
RECORD_STATUS = """
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  if (!status) return;
  new MutationObserver(() => window.recordStatus(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
});
"""
# The first play() of the ad is refused as a browser that blocks autoplay refuses it.
BLOCK_FIRST_AUTOPLAY = """
(() => {
  const play = HTMLMediaElement.prototype.play;
  let blocked = false;
  HTMLMediaElement.prototype.play = function () {
    if (this.id === "ad" && !blocked) {
      blocked = true;
      return Promise.reject(new DOMException("play() needs a user gesture", "NotAllowedError"));
    }
    return play.call(this);
  };
})();
"""


@pytest.fixture(scope="session")
def mpeg4_part2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s MPEG-4 Part 2 (`mp4v`) .mp4, as OpenCV writes it by default: no current browser plays it."""
    path = tmp_path_factory.mktemp("videos") / "old-ad.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 180))
    for index in range(40):
        picture = np.full((180, 320, 3), (40 + 4 * index, 120, 200), np.uint8)
        cv2.putText(picture, f"old ad {index}", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(picture)
    writer.release()
    return path


@pytest.fixture
def quick_study(acme, asgi_server):
    """The Spring campaign with a short baseline, sending people back to a panel."""
    study = acme.study
    study.baseline_seconds = 1
    # About the ad, not frame quality: a loaded CI machine may capture fewer frames.
    study.min_usable_frame_ratio = 0.3
    for outcome in ("complete", "failed", "declined", "over_quota"):
        setattr(study, f"redirect_{outcome}_url", f"{asgi_server}/panel-return/?status={outcome}&pid={{pid}}")
    study.save()
    return study


def add_old_ad(study, video_file: Path) -> Ad:
    """The ad as a study launched before the upload checks holds it: straight into the database."""
    assert b"mp4v" in video_file.read_bytes()  # the sample entry of its video track
    probe = probe_video(video_file)  # (OpenCV's reader names the codec FMP4)
    with pytest.raises(ValidationError, match="MPEG-4 Part 2"):
        check_playable(probe, "mp4")  # what an upload would be refused with today
    ad = Ad(study=study, title="Old ad", duration_ms=probe.duration_ms, position=1)
    with video_file.open("rb") as video:
        ad.video.save(video_file.name, File(video), save=False)
    ad.save()
    return ad


def start_watching(page, link: str) -> None:
    """Consent and the camera check by keyboard, then Start on the watch page."""
    page.goto(link)
    page.focus("#accept")
    page.keyboard.press("Enter")
    page.wait_for_selector("#start-check")
    page.focus("#start-check")
    page.keyboard.press("Enter")
    page.wait_for_url("**/watch/", timeout=30_000)
    page.focus("#start")
    page.keyboard.press("Enter")


def test_an_ad_the_browser_cannot_play_ends_the_session_failed_with_the_failed_redirect(
    acme, quick_study, asgi_server, celery_worker, browser, mpeg4_part2_file
):
    old_ad = add_old_ad(quick_study, mpeg4_part2_file)  # after the Spring ad, which plays
    statuses: list[str] = []
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.expose_function("recordStatus", lambda text: statuses.append(text))
    page.add_init_script(RECORD_STATUS)
    # A German participant: every word on the way is German.
    start_watching(page, f"{asgi_server}/s/{quick_study.public_id}/?pid=old-1&c=DE")
    page.wait_for_selector("#ad:not([hidden])", timeout=20_000)  # the Spring ad
    page.wait_for_url("**/end/", timeout=60_000)
    end_text = page.text_content("#ad-unplayable")
    screenshot(page, ARTIFACTS, "end-page")
    page.wait_for_url("**/panel-return/?status=failed&pid=old-1", timeout=30_000)

    with translation.override("de"):
        unplayable = gettext(
            "Your browser cannot play this video, so the study ends here. Thank you for your time."
        )
        ended_early = gettext("Your browser could not play the video, so the study ended early.")
    assert unplayable.startswith("Ihr Browser kann dieses Video nicht abspielen")
    assert unplayable in statuses, statuses
    assert end_text == ended_early
    session = ParticipantSession.objects.get(external_participant_id="old-1")
    assert session.state == "failed" and session.language == "de"
    assert session.exclusion_reason == f"ad_unplayable: ad {old_ad.pk} (not_supported): Old ad"
    event = SessionEvent.objects.get(session=session, name="ad_unplayable")
    assert (event.ad_id, event.detail) == (old_ad.pk, "not_supported")
    # The Spring ad before it was watched and its readings stored (acked before the report went).
    assert FrameResult.objects.filter(session=session, ad=acme.ad).count() >= 10


def test_autoplay_blocked_asks_for_play_and_the_study_goes_on(
    acme, quick_study, asgi_server, celery_worker, browser
):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.add_init_script(BLOCK_FIRST_AUTOPLAY)
    start_watching(page, f"{asgi_server}/s/{quick_study.public_id}/?pid=autoplay-1&c=US")
    page.wait_for_selector("#play:not([hidden])", timeout=20_000)
    assert page.text_content("#status") == "Your browser paused the video. Please press Play to continue."
    screenshot(page, ARTIFACTS, "autoplay-blocked")
    session = ParticipantSession.objects.get(external_participant_id="autoplay-1")
    assert session.state == "viewing" and not SessionEvent.objects.filter(session=session).exists()
    page.focus("#play")
    page.keyboard.press("Enter")
    page.wait_for_url("**/panel-return/?status=complete&pid=autoplay-1", timeout=60_000)

    session.refresh_from_db()
    assert session.state == "completed"
    assert not SessionEvent.objects.filter(session=session, name="ad_unplayable").exists()
