"""Participant pages: study link -> consent -> watch -> finish -> thanks, and the refusals on the way."""

import json

import pytest

from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import Study

pytestmark = pytest.mark.django_db


def entry_url(study, **params) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"/s/{study.public_id}/?{query}"


def test_study_link_starts_a_session_and_leads_to_consent(client, acme):
    response = client.get(entry_url(acme.study, pid="panel-42", c="de"))
    session = ParticipantSession.objects.get()
    assert response.status_code == 302 and response.url == f"/p/{session.token}/consent/"
    assert (session.external_participant_id, session.country, session.state) == ("panel-42", "DE", "started")
    assert len(session.token) >= 40


def test_consent_page_says_frames_are_discarded(client, acme):
    client.get(entry_url(acme.study, pid="p", c="DE"))
    session = ParticipantSession.objects.get()
    page = client.get(f"/p/{session.token}/consent/").content.decode()
    assert "discarded" in page and acme.study.consent_text[:40] in page


def test_accepting_consent_records_time_and_opens_the_player(client, acme):
    client.get(entry_url(acme.study, pid="p", c="DE"))
    session = ParticipantSession.objects.get()
    response = client.post(f"/p/{session.token}/consent/", {"decision": "accept"})
    session.refresh_from_db()
    assert response.url == f"/p/{session.token}/watch/"
    assert session.state == "consented" and session.consent_at is not None

    page = client.get(response.url)
    config = json.loads(
        page.content.decode().split('id="capture-config" type="application/json">')[1].split("</script>")[0]
    )
    assert config["socketPath"] == f"/ws/capture/{session.token}/"
    assert config["fps"] == 5
    assert [ad["id"] for ad in config["ads"]] == [acme.ad.pk]


def test_declining_ends_the_session_without_capture(client, acme):
    client.get(entry_url(acme.study, pid="p", c="DE"))
    session = ParticipantSession.objects.get()
    response = client.post(f"/p/{session.token}/consent/", {"decision": "decline"}, follow=True)
    session.refresh_from_db()
    assert session.state == "declined" and session.consent_at is None
    assert b"Nothing was recorded" in response.content
    assert client.get(f"/p/{session.token}/watch/").url == f"/p/{session.token}/thanks/"


def test_consent_without_a_decision_is_a_clear_400(client, acme):
    session = ParticipantSession.objects.create(study=acme.study)
    assert client.post(f"/p/{session.token}/consent/", {}).status_code == 400


def test_same_panel_participant_resumes_their_session(client, acme):
    client.get(entry_url(acme.study, pid="panel-42", c="DE"))
    client.get(entry_url(acme.study, pid="panel-42", c="DE"))
    assert ParticipantSession.objects.count() == 1


@pytest.mark.parametrize(
    "params, status",
    [
        ({"pid": "p", "c": "FR"}, 403),
        ({"pid": "p", "c": "Germany"}, 400),
        ({"pid": "<script>", "c": "DE"}, 400),
    ],
)
def test_bad_entry_parameters_get_a_clear_page(client, acme, params, status):
    response = client.get(entry_url(acme.study, **params))
    assert response.status_code == status
    assert ParticipantSession.objects.count() == 0


def test_closed_study_and_unknown_link_are_refused(client, acme):
    acme.study.status = Study.Status.CLOSED
    acme.study.save()
    assert client.get(entry_url(acme.study, pid="p", c="DE")).status_code == 410
    assert client.get("/s/no-such-study/?pid=p&c=DE").status_code == 404


def test_ad_video_is_served_only_to_sessions_of_its_study(client, acme):
    session = ParticipantSession.objects.create(study=acme.study, state="consented")
    response = client.get(f"/p/{session.token}/ads/{acme.ad.pk}/video")
    assert response.status_code == 200 and response["Content-Type"] == "video/webm"
    assert b"".join(response.streaming_content)[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
    assert client.get(f"/p/{session.token}/ads/{acme.other_ad.pk}/video").status_code == 404
    assert client.get(f"/p/not-a-token/ads/{acme.ad.pk}/video").status_code == 404


def test_finish_completes_and_thanks(client, acme):
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    response = client.post(f"/p/{session.token}/finish/", follow=True)
    session.refresh_from_db()
    assert session.state == "completed" and session.completed_at is not None
    assert b"Thank you" in response.content
    assert client.get(f"/p/{session.token}/ads/{acme.ad.pk}/video").status_code == 404


def test_unknown_session_token_is_404(client):
    assert client.get("/p/unknown/consent/").status_code == 404
