"""Links without a panel participant id: a study that requires one refuses them with a clear 400 in the
participant's language and makes no session; a study that does not (what studies made before the option keep)
lets them in as today, but not silently: the entry is logged and the set-up page counts and explains them."""

from __future__ import annotations

import logging

import pytest
from django.utils import translation
from django.utils.translation import gettext

from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import panel_redirect_url
from research_portal.studies.models import Study
from tests.studies.test_setup_pages import study_form_data

pytestmark = pytest.mark.django_db

INCOMPLETE = "This link is incomplete"
MISSING = (
    "The link is missing your participant id. Please go back to your panel and open the study from there."
)


@pytest.fixture
def requiring(acme) -> Study:
    acme.study.require_participant_id = True
    acme.study.redirect_over_quota_url = "https://panel.example/full?id={pid}"
    acme.study.save()
    return acme.study


@pytest.mark.parametrize("query", ["c=US", "pid=&c=US", "pid=%20%20&c=US", "c=US&src=mail"])
def test_a_study_that_requires_the_panel_id_refuses_links_without_one(client, requiring, query):
    response = client.get(f"/s/{requiring.public_id}/?{query}", HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    page = response.content.decode()
    assert INCOMPLETE in page and MISSING in page
    assert "panel.example" not in page  # no redirect with an empty id
    assert "Set-Cookie" not in response.headers or "facecode_entry" not in response.headers["Set-Cookie"]
    assert not ParticipantSession.objects.exists()


def test_the_refusal_is_in_the_participants_language(client, requiring):
    response = client.get(f"/s/{requiring.public_id}/?c=DE", HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400 and response["Content-Language"] == "de"
    with translation.override("de"):
        assert gettext(INCOMPLETE) in response.content.decode() and gettext(INCOMPLETE) != INCOMPLETE


def test_a_study_that_requires_the_panel_id_lets_links_with_one_in(client, requiring):
    response = client.get(f"/s/{requiring.public_id}/?pid=panel-7&c=US")
    session = ParticipantSession.objects.get()
    assert response.status_code == 302 and session.external_participant_id == "panel-7"


def test_without_the_option_a_link_without_an_id_still_enters_but_is_logged(client, acme, caplog):
    acme.study.redirect_complete_url = "https://panel.example/done?id={pid}"
    acme.study.save()
    assert not acme.study.require_participant_id  # the model's default: what older studies keep
    with caplog.at_level(logging.WARNING, logger="research_portal.capture.participation"):
        first = client.get(f"/s/{acme.study.public_id}/?c=US")
        second = client.get(f"/s/{acme.study.public_id}/?c=US")
    sessions = list(ParticipantSession.objects.order_by("pk"))
    assert first.status_code == second.status_code == 302
    # No id to resume by: each opening is a session of its own, without an id.
    assert [session.external_participant_id for session in sessions] == ["", ""]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"study {acme.study.pk}: session {sessions[0].pk} entered without a panel id" in warnings[0]
    assert "'pid'" in warnings[0] and "empty {pid}" in warnings[0]
    # What the panel gets back: its redirect with an empty id (documented in docs/architecture.md).
    assert panel_redirect_url(acme.study, "completed", "") == "https://panel.example/done?id="


def test_the_setup_page_counts_sessions_without_an_id_and_offers_the_option(client, alice, acme):
    client.force_login(alice)
    ParticipantSession.objects.create(study=acme.study, external_participant_id="", via_entry_link=True)
    ParticipantSession.objects.create(study=acme.study, external_participant_id="", via_entry_link=True)
    ParticipantSession.objects.create(study=acme.study, external_participant_id="p-1", via_entry_link=True)
    ParticipantSession.objects.create(study=acme.study, external_participant_id="", is_preview=True)
    page = client.get(f"/studies/{acme.study.pk}/").content.decode()
    assert "2 sessions started without a participant id" in page
    assert 'name="require_participant_id"' in page
    acme.study.require_participant_id = True
    acme.study.save()
    page = client.get(f"/studies/{acme.study.pk}/").content.decode()
    assert "started without a participant id" not in page


def test_new_studies_refuse_links_without_an_id_unless_unticked(client, alice, acme):
    client.force_login(alice)
    form = client.get("/studies/new/").context["form"]
    assert form["require_participant_id"].value() is True
    base = {"name": "Winter", "participant_id_param": "pid", "country_param": "c", "capture_fps": "5"}
    base |= {"baseline_seconds": "5", "ad_order": "fixed", "max_check_attempts": "3"}
    base |= {"check_attempt_seconds": "20", "min_usable_frame_ratio": "0.6", "min_face_quality": "0.3"}
    base |= {"frame_retention_days": "30", "retention_days": "365"}
    assert client.post("/studies/new/", {**base, "require_participant_id": "on"}).status_code == 302
    assert client.post("/studies/new/", {**base, "name": "Autumn"}).status_code == 302
    assert Study.objects.get(name="Winter").require_participant_id is True
    assert Study.objects.get(name="Autumn").require_participant_id is False
    # A launched study may still turn it on (it changes no captured data).
    study = acme.study
    response = client.post(f"/studies/{study.pk}/", study_form_data(study, require_participant_id="on"))
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.require_participant_id is True
