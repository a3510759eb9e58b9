"""Admins create studies and upload ads in Django admin; the video is probed for its duration."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from research_portal.studies.models import Ad, Study

pytestmark = pytest.mark.django_db


def test_admin_uploads_an_ad_and_its_duration_is_probed(admin_client, acme, ad_video_file):
    draft = Study.objects.create(organization=acme.organization, name="Draft")
    upload = SimpleUploadedFile("launch.webm", ad_video_file.read_bytes(), content_type="video/webm")
    response = admin_client.post(
        "/admin/studies/ad/add/", {"study": draft.pk, "title": "Launch", "video": upload, "position": 1}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    ad = Ad.objects.get(title="Launch")
    assert 3500 <= ad.duration_ms <= 4500


def test_admin_keeps_a_launched_studys_ads_locked(admin_client, acme, ad_video_file):
    upload = SimpleUploadedFile("extra.webm", ad_video_file.read_bytes(), content_type="video/webm")
    response = admin_client.post(
        "/admin/studies/ad/add/", {"study": acme.study.pk, "title": "Extra", "video": upload, "position": 1}
    )
    assert response.status_code == 200 and b"would mix sessions that saw different ads" in response.content
    assert not Ad.objects.filter(title="Extra").exists()
    ad = acme.ad
    moved = {"study": acme.study.pk, "title": ad.title, "position": 3}
    assert b"would mix sessions" in admin_client.post(f"/admin/studies/ad/{ad.pk}/change/", moved).content
    renamed = {"study": acme.study.pk, "title": "Spring ad (final cut)", "position": ad.position}
    assert admin_client.post(f"/admin/studies/ad/{ad.pk}/change/", renamed).status_code == 302
    ad.refresh_from_db()
    assert (ad.title, ad.position) == ("Spring ad (final cut)", 0)


def test_admin_upload_of_a_non_video_is_refused(admin_client, acme):
    upload = SimpleUploadedFile("fake.webm", b"this is not a video", content_type="video/webm")
    response = admin_client.post(
        "/admin/studies/ad/add/", {"study": acme.study.pk, "title": "Broken", "video": upload, "position": 1}
    )
    assert response.status_code == 200
    assert b"This file is not a video" in response.content
    assert not Ad.objects.filter(title="Broken").exists()


def study_form(organization, **fields) -> dict:
    """What the admin's study form posts: every field plus the three inline formsets' management data."""
    data = {
        "organization": organization.pk,
        "name": "Summer",
        "status": "draft",
        "allowed_countries": '["DE"]',
        "participant_id_param": "pid",
        "country_param": "c",
        "link_signature_param": "sig",
        "link_timestamp_param": "ts",
        "link_max_age_minutes": 0,
        "quota_seat_minutes": 30,
        "consent_text": "ok",
        "capture_fps": 5,
        "ad_order": "fixed",
        "baseline_seconds": 5,
        "max_check_attempts": 3,
        "check_attempt_seconds": 20,
        "min_usable_frame_ratio": 0.6,
        "min_face_quality": 0.3,
    }
    for prefix in ("ads", "quotas", "consent_versions"):
        data.update({f"{prefix}-TOTAL_FORMS": 0, f"{prefix}-INITIAL_FORMS": 0})
    data.update(fields)
    return data


def test_admin_can_create_a_study_with_quotas(admin_client, acme):
    form = study_form(
        acme.organization,
        **{
            "quotas-TOTAL_FORMS": 1,
            "quotas-0-country": "DE",
            "quotas-0-target": 150,
            "redirect_complete_url": "https://panel.example/c?id={pid}",
        },
    )
    response = admin_client.post("/admin/studies/study/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    study = acme.organization.studies.get(name="Summer")
    assert list(study.quotas.values_list("country", "target")) == [("DE", 150)]
    assert study.redirect_complete_url == "https://panel.example/c?id={pid}"


def test_allowed_countries_must_be_two_letter_codes(admin_client, acme):
    form = study_form(
        acme.organization, name="Spring campaign", status="live", allowed_countries='["Germany"]'
    )
    response = admin_client.post(f"/admin/studies/study/{acme.study.pk}/change/", form)
    assert response.status_code == 200 and b"two-letter country codes" in response.content
    acme.study.refresh_from_db()
    assert acme.study.allowed_countries == ["DE", "US", "JP"]


def test_admin_refuses_codes_that_are_no_country(admin_client, acme):
    allowed = study_form(acme.organization, name="Spring campaign", allowed_countries='["DE", "XX", "UK"]')
    response = admin_client.post(f"/admin/studies/study/{acme.study.pk}/change/", allowed)
    assert response.status_code == 200
    assert b"XX is not an ISO 3166-1 country code" in response.content
    assert b"UK is not an ISO 3166-1 country code (e.g. DE for Germany). For United Kingdom use GB." in (
        response.content
    )
    quota = study_form(
        acme.organization,
        **{"quotas-TOTAL_FORMS": 1, "quotas-0-country": "ZZ", "quotas-0-target": 150},
    )
    response = admin_client.post("/admin/studies/study/add/", quota)
    assert response.status_code == 200 and b"ZZ is not an ISO 3166-1 country code" in response.content
    assert not acme.organization.studies.filter(name="Summer").exists()
    acme.study.refresh_from_db()
    assert acme.study.allowed_countries == ["DE", "US", "JP"]


def test_an_admin_quota_in_small_letters_is_stored_as_its_code(admin_client, acme):
    quota = study_form(
        acme.organization,
        **{"quotas-TOTAL_FORMS": 1, "quotas-0-country": " de", "quotas-0-target": 150},
    )
    assert admin_client.post("/admin/studies/study/add/", quota).status_code == 302
    study = acme.organization.studies.get(name="Summer")
    assert list(study.quotas.values_list("country", "target")) == [("DE", 150)]


def test_admin_lists_participant_sessions_read_only_without_tokens(admin_client, acme):
    from research_portal.capture.models import ParticipantSession

    session = ParticipantSession.objects.create(
        study=acme.study, external_participant_id="panel-77", country="DE"
    )
    listing = admin_client.get("/admin/capture/participantsession/").content.decode()
    assert "panel-77" in listing
    detail = admin_client.get(f"/admin/capture/participantsession/{session.pk}/change/").content.decode()
    assert session.token not in detail and "panel-77" in detail


def test_consent_translations_must_be_known_languages(admin_client, acme):
    form = study_form(acme.organization, consent_translations='{"xx": "text"}')
    response = admin_client.post(f"/admin/studies/study/{acme.study.pk}/change/", form)
    assert response.status_code == 200 and b"language code to consent text" in response.content
