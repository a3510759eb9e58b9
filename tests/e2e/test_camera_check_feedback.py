"""The camera check in headless Chromium with a fake webcam of a real face: from the press of Start the page
says what is happening ("Starting camera…", then "Checking…", never the idle "Press Start…" again), and once
the server says passed, "All set!" stays, with a Continue button, until the page moves on to the video."""

from __future__ import annotations

import pytest

from research_portal.capture.models import ParticipantSession

pytestmark = pytest.mark.e2e

# Every text the feedback line shows, with the time since the click, as the page changes it.
RECORD_FEEDBACK = """
document.addEventListener("DOMContentLoaded", () => {
  const feedback = document.getElementById("feedback");
  if (!feedback) return;
  window.feedbackLog = [];
  new MutationObserver(() => window.feedbackLog.push([performance.now(), feedback.textContent]))
    .observe(feedback, { childList: true, characterData: true, subtree: true });
  const start = document.getElementById("start-check");
  start.addEventListener("click", () => { window.clickedAt = performance.now(); });
});
"""


def test_the_check_says_what_happens_from_start_and_keeps_the_passed_message(acme, asgi_server, browser):
    session = ParticipantSession.objects.create(study=acme.study, state="consented", ad_sequence=[acme.ad.pk])
    page = browser.new_page()
    page.add_init_script(RECORD_FEEDBACK)
    page.goto(f"{asgi_server}/p/{session.token}/check/")
    assert page.text_content("#feedback") == "Press Start camera check when you are ready."
    page.click("#start-check")
    page.wait_for_function("document.body.dataset.checkPassed === 'true'", timeout=30_000)
    assert page.text_content("#feedback") == "All set!"
    assert page.is_visible("#check-continue")
    assert page.evaluate("document.activeElement.id") == "check-continue"
    log = page.evaluate("window.feedbackLog.map(([at, text]) => [at - window.clickedAt, text])")
    page.wait_for_timeout(2000)  # well after a flash: the message is still there, the page still here
    assert page.text_content("#feedback") == "All set!" and "/check/" in page.url
    page.wait_for_url("**/watch/", timeout=10_000)  # then it moves on by itself

    texts = [text for _at, text in log]
    assert texts[0] == "Starting camera…" and log[0][0] < 100  # at once, not after the camera's 1+ s
    assert texts[1] == "Checking…"
    assert texts[-1] == "All set!"
    assert "Press Start camera check when you are ready." not in texts
    session.refresh_from_db()
    assert session.checks_passed_at is not None
