"""Participant pages: study link -> consent -> camera check -> watch -> end, and refusals on the way."""

import json

import pytest
from django.utils import timezone

from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import Study

pytestmark = pytest.mark.django_db


def entry_url(study, **params) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"/s/{study.public_id}/?{query}"


def json_script(page: bytes, element_id: str) -> dict:
    html = page.decode()
    return json.loads(html.split(f'id="{element_id}" type="application/json">')[1].split("</script>")[0])


def test_study_link_starts_a_session_and_leads_to_consent(client, acme):
    response = client.get(entry_url(acme.study, pid="panel-42", c="de"))
    session = ParticipantSession.objects.get()
    assert response.status_code == 302 and response.url == f"/p/{session.token}/consent/"
    assert (session.external_participant_id, session.country, session.state) == ("panel-42", "DE", "started")
    assert session.ad_sequence == [acme.ad.pk] and len(session.token) >= 40


def test_parameter_names_are_configurable_per_study(client, acme):
    acme.study.participant_id_param, acme.study.country_param = "rid", "market"
    acme.study.save()
    client.get(entry_url(acme.study, rid="r-7", market="US"))
    session = ParticipantSession.objects.get()
    assert (session.external_participant_id, session.country) == ("r-7", "US")


def test_consent_page_says_frames_are_discarded_unless_the_study_opts_in(client, acme):
    session = ParticipantSession.objects.create(study=acme.study)
    page = client.get(f"/p/{session.token}/consent/").content.decode()
    assert "analysed as they arrive and then discarded" in page
    assert "read facial expressions, second by second" in page  # the standard consent text
    acme.study.store_frames = True
    acme.study.save()
    page = client.get(f"/p/{session.token}/consent/").content.decode()
    assert "keeps the webcam pictures" in page and "analysed as they arrive and then discarded" not in page


def test_accepting_consent_records_version_and_time_then_opens_the_camera_check(client, acme):
    session = ParticipantSession.objects.create(study=acme.study)
    response = client.post(f"/p/{session.token}/consent/", {"decision": "accept"})
    session.refresh_from_db()
    assert response.url == f"/p/{session.token}/check/"
    assert session.state == "consented" and session.consent_at is not None
    assert (session.consent_version.version, session.consent_version.language) == (1, "en")
    assert session.consent_version.text.startswith("We will ask for your webcam")
    assert client.get(f"/p/{session.token}/watch/").url == f"/p/{session.token}/check/"


def test_a_changed_consent_text_is_a_new_version(client, acme):
    first = ParticipantSession.objects.create(study=acme.study)
    client.post(f"/p/{first.token}/consent/", {"decision": "accept"})
    acme.study.consent_text = "A new text."
    acme.study.save()
    second = ParticipantSession.objects.create(study=acme.study)
    client.post(f"/p/{second.token}/consent/", {"decision": "accept"})
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.consent_version.version, second.consent_version.version) == (1, 2)
    assert second.consent_version.text == "A new text."


def test_consent_is_shown_and_recorded_in_the_participants_language(client, acme):
    german = ParticipantSession.objects.create(study=acme.study, language="de")
    page = client.get(f"/p/{german.token}/consent/").content.decode()
    assert "Sekunde für Sekunde ausgewertet" in page  # the standard text, translated
    client.post(f"/p/{german.token}/consent/", {"decision": "accept"})
    german.refresh_from_db()
    assert german.consent_version.language == "de"
    assert german.consent_version.text.startswith("Wir bitten Sie um Zugriff auf Ihre Webcam")

    acme.study.consent_translations = {"ja": "調査のための同意文です。"}
    acme.study.save()
    japanese = ParticipantSession.objects.create(study=acme.study, language="ja")
    assert "調査のための同意文です。" in client.get(f"/p/{japanese.token}/consent/").content.decode()
    client.post(f"/p/{japanese.token}/consent/", {"decision": "accept"})
    japanese.refresh_from_db()
    assert (japanese.consent_version.language, japanese.consent_version.text) == (
        "ja",
        "調査のための同意文です。",
    )


def test_watch_page_after_the_check_carries_the_playlist_and_baseline(client, acme):
    session = ParticipantSession.objects.create(
        study=acme.study, state="consented", checks_passed_at=timezone.now(), ad_sequence=[acme.ad.pk]
    )
    config = json_script(client.get(f"/p/{session.token}/watch/").content, "capture-config")
    assert config["socketPath"] == f"/ws/capture/{session.token}/"
    assert (config["fps"], config["baselineSeconds"]) == (5, 5)
    assert [ad["id"] for ad in config["ads"]] == [acme.ad.pk]
    assert config["messages"]["too_dark"].startswith("Your face is too dark")


def test_declining_ends_the_session_with_the_declined_redirect(client, acme):
    acme.study.redirect_declined_url = "https://panel.example/back?status=declined&id={pid}"
    acme.study.save()
    client.get(entry_url(acme.study, pid="p@1", c="US"))
    session = ParticipantSession.objects.get()
    response = client.post(f"/p/{session.token}/consent/", {"decision": "decline"}, follow=True)
    session.refresh_from_db()
    assert session.state == "declined" and session.consent_at is None
    page = response.content.decode()
    assert "Nothing was recorded" in page
    assert 'href="https://panel.example/back?status=declined&amp;id=p%401"' in page
    assert client.get(f"/p/{session.token}/watch/").url == f"/p/{session.token}/end/"


def test_consent_without_a_decision_is_a_clear_400(client, acme):
    session = ParticipantSession.objects.create(study=acme.study)
    assert client.post(f"/p/{session.token}/consent/", {}).status_code == 400


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


def test_ad_video_is_served_only_to_viewing_sessions_of_its_study(client, acme):
    session = ParticipantSession.objects.create(
        study=acme.study, state="viewing", checks_passed_at=timezone.now(), ad_sequence=[acme.ad.pk]
    )
    response = client.get(f"/p/{session.token}/ads/{acme.ad.pk}/video")
    assert response.status_code == 200 and response["Content-Type"] == "video/webm"
    assert b"".join(response.streaming_content)[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
    assert client.get(f"/p/{session.token}/ads/{acme.other_ad.pk}/video").status_code == 404
    assert client.get(f"/p/not-a-token/ads/{acme.ad.pk}/video").status_code == 404
    session.state = "completed"
    session.save()
    assert client.get(f"/p/{session.token}/ads/{acme.ad.pk}/video").status_code == 404


def test_unknown_session_token_is_404(client):
    assert client.get("/p/unknown/consent/").status_code == 404
    assert client.post("/p/unknown/check/frame", b"x", content_type="image/jpeg").status_code == 404


@pytest.mark.parametrize("state", ["declined", "completed", "failed", "over_quota"])
def test_replayed_requests_on_an_ended_session_change_nothing(client, acme, state):
    session = ParticipantSession.objects.create(study=acme.study, state=state, ad_sequence=[acme.ad.pk])
    for url, data in [
        (f"/p/{session.token}/consent/", {"decision": "accept"}),
        (f"/p/{session.token}/finish/", {}),
        (f"/p/{session.token}/check/attempt-failed", {}),
    ]:
        response = client.post(url, data)
        assert response.status_code in (200, 302)
    assert client.get(f"/p/{session.token}/check/").url == f"/p/{session.token}/end/"
    assert client.get(f"/p/{session.token}/watch/").url == f"/p/{session.token}/end/"
    session.refresh_from_db()
    assert session.state == state and session.consent_at is None and session.check_attempts == 0


def test_tampered_token_and_ad_ids_are_404(client, acme):
    session = ParticipantSession.objects.create(
        study=acme.study, state="viewing", checks_passed_at=timezone.now(), ad_sequence=[acme.ad.pk]
    )
    assert client.get(f"/p/{session.token[:-1]}x/watch/").status_code == 404
    assert client.get(f"/p/{session.token}/ads/999999/video").status_code == 404
    assert client.get(f"/p/{session.token}/ads/not-a-number/video").status_code == 404
