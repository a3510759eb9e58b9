"""Admins create studies and upload ads in Django admin; the video is probed for its duration."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from research_portal.studies.models import Ad

pytestmark = pytest.mark.django_db


def test_admin_uploads_an_ad_and_its_duration_is_probed(admin_client, acme, ad_video_file):
    upload = SimpleUploadedFile("launch.webm", ad_video_file.read_bytes(), content_type="video/webm")
    response = admin_client.post(
        "/admin/studies/ad/add/", {"study": acme.study.pk, "title": "Launch", "video": upload, "position": 1}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    ad = Ad.objects.get(title="Launch")
    assert 3500 <= ad.duration_ms <= 4500


def test_admin_upload_of_a_non_video_is_refused(admin_client, acme):
    upload = SimpleUploadedFile("fake.webm", b"this is not a video", content_type="video/webm")
    response = admin_client.post(
        "/admin/studies/ad/add/", {"study": acme.study.pk, "title": "Broken", "video": upload, "position": 1}
    )
    assert response.status_code == 200
    assert b"could not be decoded as a video" in response.content
    assert not Ad.objects.filter(title="Broken").exists()


def test_admin_can_create_a_study(admin_client, acme):
    response = admin_client.post(
        "/admin/studies/study/add/",
        {
            "organization": acme.organization.pk,
            "name": "Summer",
            "status": "draft",
            "allowed_countries": '["DE"]',
            "consent_text": "ok",
            "capture_fps": 5,
            "ads-TOTAL_FORMS": 0,
            "ads-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert acme.organization.studies.filter(name="Summer").exists()


def test_allowed_countries_must_be_two_letter_codes(admin_client, acme):
    response = admin_client.post(
        f"/admin/studies/study/{acme.study.pk}/change/",
        {
            "organization": acme.organization.pk,
            "name": "Spring campaign",
            "status": "live",
            "allowed_countries": '["Germany"]',
            "consent_text": "ok",
            "capture_fps": 5,
            "ads-TOTAL_FORMS": 0,
            "ads-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200 and b"two-letter country codes" in response.content
    acme.study.refresh_from_db()
    assert acme.study.allowed_countries == ["DE", "US", "JP"]
