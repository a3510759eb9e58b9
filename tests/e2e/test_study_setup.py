"""End to end: an organisation admin signs in, creates a study on the set-up page, uploads an ad, launches
the study and opens its participant link in headless Chromium against a real daphne server and Postgres."""

from __future__ import annotations

import pytest

from inference.resources import REPO_ROOT
from research_portal.accounts.models import Organization, Role
from research_portal.capture.models import ParticipantSession
from research_portal.studies.demo import render_demo_ad
from research_portal.studies.models import Study
from tests.e2e.conftest import screenshot
from tests.support.people import PASSWORD, member

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts" / "setup"


def test_admin_sets_up_launches_and_opens_a_study(postgres, asgi_server, browser, tmp_path):
    organization = Organization.objects.create(name="Northwind Research")
    member(organization, Role.ADMIN, "olivia")
    video = tmp_path / "summer-ad.webm"
    render_demo_ad(video, seconds=3, fps=10, size=(320, 180))

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{asgi_server}/studies/")
    assert "/accounts/login/" in page.url
    screenshot(page, ARTIFACTS, "01-sign-in")
    page.fill("#id_username", "olivia")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/studies/")
    screenshot(page, ARTIFACTS, "02-no-studies")
    page.click("text=Create your first study")
    page.wait_for_url("**/studies/new/")

    # A bad value first: the page keeps what was typed and marks the field.
    page.fill("#id_name", "Summer launch")
    page.fill("#id_client", "Fizzy Drinks Ltd")
    page.fill("#id_countries", "DE 100\nUS 80\nGermany")
    page.fill("#id_capture_fps", "60")
    page.click("button:has-text('Create study')")
    page.wait_for_selector(".field-error")
    errors = page.inner_text("#study-form")
    assert "“Germany” is not a two-letter country code" in errors
    assert "less than or equal to 15" in errors
    assert not Study.objects.filter(name="Summer launch").exists()
    screenshot(page, ARTIFACTS, "03-field-errors")

    page.fill("#id_countries", "DE 100\nUS 80")
    page.fill("#id_capture_fps", "5")
    page.fill("#id_consent_text", "We read your facial expressions while you watch a short video.")
    page.fill("#id_redirect_complete_url", "https://panel.example.com/complete?id={pid}")
    page.click("button:has-text('Create study')")
    page.wait_for_selector("#study-status")
    study = Study.objects.get(name="Summer launch")
    assert study.organization == organization and study.allowed_countries == ["DE", "US"]
    assert page.text_content("#study-status") == "Draft"

    page.fill("#id_title", "Summer ad")
    page.set_input_files("#id_video", str(video))
    page.click("#upload")
    page.wait_for_selector(".ad-list li")
    assert "Summer ad" in page.inner_text("#ads")
    ad = study.ads.get()
    assert 2500 <= ad.duration_ms <= 3500
    # The admin's preview of the ad plays from the protected URL (not a public media path).
    page.wait_for_function("document.querySelector('.ad-list video').readyState >= 1", timeout=15000)
    assert page.evaluate("document.querySelector('.ad-list video').duration") == pytest.approx(3, abs=0.5)
    screenshot(page, ARTIFACTS, "04-setup-with-ad")

    page.click("#launch")  # asks first, naming what launching locks
    page.wait_for_url(f"**/studies/{study.pk}/launch/")
    assert "Summer ad" in page.inner_text("#locked-ads")
    assert "Frames per second" in page.inner_text("#locked-settings")
    screenshot(page, ARTIFACTS, "05-launch-confirmation")
    page.click("#confirm-launch")
    page.wait_for_selector("#study-status:has-text('Live')")
    study.refresh_from_db()
    assert study.status == Study.Status.LIVE
    assert "capture settings and ads are locked" in page.inner_text("#study-form")
    screenshot(page, ARTIFACTS, "06-live")

    link = page.get_attribute("input.link[data-country='DE']", "value")
    assert link == f"{asgi_server}/s/{study.public_id}/?pid=PARTICIPANT_ID&c=DE"
    participant = browser.new_page(viewport={"width": 1000, "height": 800})
    participant.goto(link.replace("PARTICIPANT_ID", "panel-777"))
    participant.wait_for_selector("#accept")
    assert "We read your facial expressions" in participant.inner_text("body")
    screenshot(participant, ARTIFACTS, "07-participant-consent")
    session = ParticipantSession.objects.get(study=study)
    assert (session.external_participant_id, session.country, session.is_preview) == (
        "panel-777",
        "DE",
        False,
    )
