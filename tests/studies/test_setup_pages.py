"""The study set-up pages: create, edit, upload ads, order them, preview, launch / pause / close, links;
bad input is refused field by field with nothing half-created; a launched study refuses corrupting changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from research_portal.accounts.models import Role
from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import validated_completes
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, CountryQuota, Study
from research_portal.studies.services import ChangeRefused, check_study_change_allowed
from tests.support.people import member

pytestmark = pytest.mark.django_db


def valid_study(**overrides) -> dict:
    data = {
        "name": "Summer launch",
        "client": "Fizzy Drinks Ltd",
        "countries": "DE 200\nus: 150\nJP",
        "participant_id_param": "rid",
        "country_param": "cc",
        "consent_text": "We record your expressions.",
        "consent_de": "Wir erfassen Ihre Mimik.",
        "redirect_complete_url": "panel.example.com/done?id={pid}",
        "redirect_failed_url": "",
        "redirect_declined_url": "",
        "redirect_over_quota_url": "https://panel.example.com/full?id={pid}",
        "capture_fps": "5",
        "baseline_seconds": "5",
        "ad_order": "fixed",
        "max_check_attempts": "3",
        "check_attempt_seconds": "20",
        "min_usable_frame_ratio": "0.6",
        "min_face_quality": "0.3",
        "frame_retention_days": "30",
        "retention_days": "180",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def study_form_data(study: Study, **overrides) -> dict:
    quotas = dict(study.quotas.values_list("country", "target"))
    data = {
        "name": study.name,
        "client": study.client,
        "countries": "\n".join(f"{c} {quotas[c]}" if c in quotas else c for c in study.allowed_countries),
        "participant_id_param": study.participant_id_param,
        "country_param": study.country_param,
        "consent_text": study.consent_text,
        "redirect_complete_url": study.redirect_complete_url,
        "redirect_failed_url": study.redirect_failed_url,
        "redirect_declined_url": study.redirect_declined_url,
        "redirect_over_quota_url": study.redirect_over_quota_url,
        "capture_fps": study.capture_fps,
        "baseline_seconds": study.baseline_seconds,
        "ad_order": study.ad_order,
        "max_check_attempts": study.max_check_attempts,
        "check_attempt_seconds": study.check_attempt_seconds,
        "min_usable_frame_ratio": study.min_usable_frame_ratio,
        "min_face_quality": study.min_face_quality,
        "frame_retention_days": study.frame_retention_days,
        "retention_days": study.retention_days,
    }
    if study.store_frames:
        data["store_frames"] = "on"
    data.update(overrides)
    return data


@pytest.fixture
def admin_client(client, acme):
    client.force_login(member(acme.organization, Role.ADMIN, "ada"))
    return client


def test_admin_creates_a_study_with_countries_quotas_and_translations(admin_client, acme):
    response = admin_client.post("/studies/new/", valid_study())
    study = Study.objects.get(name="Summer launch")
    assert response.status_code == 302 and response["Location"] == f"/studies/{study.pk}/"
    assert study.organization == acme.organization and study.status == Study.Status.DRAFT
    assert study.client == "Fizzy Drinks Ltd"
    assert study.allowed_countries == ["DE", "JP", "US"]
    assert dict(study.quotas.values_list("country", "target")) == {"DE": 200, "US": 150}
    assert study.consent_translations == {"de": "Wir erfassen Ihre Mimik."}
    assert study.redirect_complete_url == "https://panel.example.com/done?id={pid}"
    assert (study.participant_id_param, study.country_param, study.retention_days) == ("rid", "cc", 180)
    assert AuditLog.objects.filter(
        study=study, action=AuditLog.Action.STUDY_CREATED, actor_name="ada"
    ).exists()

    page = admin_client.get(f"/studies/{study.pk}/")
    assert page.status_code == 200
    links = dict(page.context["links"])
    base = f"http://testserver/s/{study.public_id}/"
    assert links == {
        "DE": base + "?rid=PARTICIPANT_ID&cc=DE",
        "JP": base + "?rid=PARTICIPANT_ID&cc=JP",
        "US": base + "?rid=PARTICIPANT_ID&cc=US",
    }
    assert links["DE"].replace("&", "&amp;").encode() in page.content


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": "  "}, "name", "required"),
        ({"countries": "DE 200\nGermany"}, "countries", "“Germany” is not a two-letter country code"),
        ({"countries": "DE 0"}, "countries", "The quota for DE must be a whole number"),
        ({"countries": "DE, de"}, "countries", "DE is listed twice."),
        ({"countries": "DE 200\nXX 50"}, "countries", "XX is not an ISO 3166-1 country code"),
        ({"countries": "uk 100"}, "countries", "For United Kingdom use GB."),
        ({"capture_fps": "60"}, "capture_fps", "less than or equal to 15"),
        ({"capture_fps": "abc"}, "capture_fps", "Enter a whole number."),
        ({"min_face_quality": "1.5"}, "min_face_quality", "less than or equal to 1"),
        ({"min_usable_frame_ratio": "-0.1"}, "min_usable_frame_ratio", "greater than or equal to 0"),
        ({"redirect_complete_url": "javascript:alert(1)"}, "redirect_complete_url", "Enter a valid URL."),
        ({"participant_id_param": "p id"}, "participant_id_param", "letters, digits and _"),
        ({"country_param": "rid"}, "country_param", "must differ"),
        ({"retention_days": "0"}, "retention_days", "greater than or equal to 1"),
        (
            {"store_frames": "on", "frame_retention_days": "365"},
            "frame_retention_days",
            "cannot be kept longer than the raw readings",
        ),
        ({"ad_order": "sideways"}, "ad_order", "Select a valid choice."),
    ],
)
def test_bad_values_are_refused_on_their_field_and_nothing_is_created(
    admin_client, overrides, field, message
):
    studies_before = Study.objects.count()
    response = admin_client.post("/studies/new/", valid_study(**overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert message.lower() in " ".join(errors[field]).lower()
    assert f'id="id_{field}-error"'.encode() in response.content
    assert Study.objects.count() == studies_before
    assert not CountryQuota.objects.filter(study__name="Summer launch").exists()


def test_a_failure_after_the_study_row_rolls_everything_back(admin_client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("database went away mid-create")

    monkeypatch.setattr(CountryQuota.objects, "update_or_create", explode)
    with pytest.raises(RuntimeError):
        admin_client.post("/studies/new/", valid_study())
    assert not Study.objects.filter(name="Summer launch").exists()
    assert not AuditLog.objects.filter(action=AuditLog.Action.STUDY_CREATED).exists()


def draft_study(acme) -> Study:
    return Study.objects.create(organization=acme.organization, name="Draft study", allowed_countries=["DE"])


def test_ads_upload_with_validation_and_keep_their_order(
    admin_client, acme, ad_video_file: Path, django_capture_on_commit_callbacks
):
    study = draft_study(acme)
    url = f"/studies/{study.pk}/ads/"
    for title in ("First", "Second"):
        with ad_video_file.open("rb") as video:
            response = admin_client.post(url, {"title": title, "video": video})
        assert response.status_code == 302, response.content[:500]
    first, second = study.ads.order_by("position")
    assert (first.title, second.title) == ("First", "Second")
    assert 3500 <= first.duration_ms <= 4500  # the 4 s test video, probed

    # Wrong type, not a video, no title: refused on the field, nothing stored.
    bad = [
        ({"title": "Doc", "video": SimpleUploadedFile("ad.pdf", b"%PDF-1.4")}, "video", "MP4 or WebM"),
        ({"title": "Junk", "video": SimpleUploadedFile("ad.webm", b"junk" * 100)}, "video", "not a video"),
        ({"title": " ", "video": SimpleUploadedFile("ad.webm", b"x")}, "title", "required"),
    ]
    for data, field, message in bad:
        response = admin_client.post(url, data)
        assert response.status_code == 400
        assert message in " ".join(response.context["ad_form"].errors[field])
    assert study.ads.count() == 2

    with override_settings(AD_MAX_UPLOAD_BYTES=1000), ad_video_file.open("rb") as video:
        response = admin_client.post(url, {"title": "Big", "video": video})
    assert response.status_code == 400
    assert "larger than" in " ".join(response.context["ad_form"].errors["video"])
    assert study.ads.count() == 2

    response = admin_client.post(f"/studies/{study.pk}/ads/{second.pk}/move/up/")
    assert response.status_code == 302
    assert list(study.ads.order_by("position").values_list("title", flat=True)) == ["Second", "First"]
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(f"/studies/{study.pk}/ads/{first.pk}/remove/").status_code == 302
    assert list(study.ads.values_list("title", flat=True)) == ["Second"]
    assert not Path(first.video.path).exists()

    video = admin_client.get(f"/studies/{study.pk}/ads/{second.pk}/video")
    assert video.status_code == 200 and video["Content-Type"] == "video/webm"
    assert b"".join(video.streaming_content)[:4] == b"\x1a\x45\xdf\xa3"  # WebM/EBML magic


def test_launch_pause_resume_close(admin_client, acme, ad_video_file):
    study = draft_study(acme)
    response = admin_client.post(f"/studies/{study.pk}/status/launch/", follow=True)
    assert "Before launching, upload at least one ad." in response.content.decode()
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT
    with ad_video_file.open("rb") as video:
        admin_client.post(f"/studies/{study.pk}/ads/", {"title": "Only ad", "video": video})
    assert admin_client.post(f"/studies/{study.pk}/launch/").status_code == 302  # the launch confirmation
    study.refresh_from_db()
    assert study.status == "live"
    for action, status in [("pause", "paused"), ("resume", "live"), ("close", "closed")]:
        assert admin_client.post(f"/studies/{study.pk}/status/{action}/").status_code == 302
        study.refresh_from_db()
        assert study.status == status
    response = admin_client.post(f"/studies/{study.pk}/status/resume/", follow=True)
    assert "A closed study cannot resume." in response.content.decode()
    study.refresh_from_db()
    assert study.status == Study.Status.CLOSED
    assert list(
        AuditLog.objects.filter(study=study, action=AuditLog.Action.STUDY_STATUS)
        .order_by("id")
        .values_list("detail__transition", flat=True)
    ) == ["launch", "pause", "resume", "close"]
    # A closed study's link says so.
    entry = admin_client.get(f"/s/{study.public_id}/?pid=p1&c=DE")
    assert entry.status_code == 410


def test_a_launched_study_refuses_changes_that_would_corrupt_its_data(admin_client, acme, ad_video_file):
    study = acme.study  # live, with an ad
    url = f"/studies/{study.pk}/"
    response = admin_client.post(url, study_form_data(study, capture_fps=10, ad_order="random"))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "frame rate can no longer change" in errors["capture_fps"][0]
    assert "ad order can no longer change" in errors["ad_order"][0]
    study.refresh_from_db()
    assert study.capture_fps == 5 and study.ad_order == "fixed"

    with ad_video_file.open("rb") as video:
        response = admin_client.post(f"{url}ads/", {"title": "Extra", "video": video})
    assert response.status_code == 400
    assert "would mix sessions" in response.context["ad_form"].non_field_errors()[0]
    response = admin_client.post(f"{url}ads/{acme.ad.pk}/remove/", follow=True)
    assert "would mix sessions" in response.content.decode()
    assert Ad.objects.filter(pk=acme.ad.pk).exists()

    # What does not affect captured data can still change: name, client, redirects, quotas, retention.
    response = admin_client.post(
        url,
        study_form_data(
            study,
            name="Spring campaign (wave 2)",
            client="Acme Foods",
            countries="DE 50\nUS\nJP",
            retention_days=90,
        ),
    )
    assert response.status_code == 302
    study.refresh_from_db()
    assert (study.name, study.client, study.retention_days) == ("Spring campaign (wave 2)", "Acme Foods", 90)
    assert dict(study.quotas.values_list("country", "target")) == {"DE": 50}

    with pytest.raises(ChangeRefused, match="the baseline length"):
        check_study_change_allowed(study, ["baseline_seconds"])


def test_a_draft_with_only_preview_sessions_can_still_change(admin_client, acme, ad_video_file):
    study = draft_study(acme)
    with ad_video_file.open("rb") as video:
        admin_client.post(f"/studies/{study.pk}/ads/", {"title": "Ad", "video": video})
    response = admin_client.post(f"/studies/{study.pk}/preview/", {"language": "de"})
    session = ParticipantSession.objects.get(study=study)
    assert session.is_preview and session.language == "de" and session.country == "DE"
    assert response["Location"] == f"/p/{session.token}/consent/"
    consent = admin_client.get(response["Location"])
    assert consent.status_code == 200 and consent["Content-Language"] == "de"
    # A completed preview is not a validated complete: quotas never see it.
    ParticipantSession.objects.filter(pk=session.pk).update(state=ParticipantSession.State.COMPLETED)
    assert validated_completes(study, "DE") == 0
    check_study_change_allowed(study, ["capture_fps"], ads=True)  # still a draft: no refusal


def test_analysts_cannot_set_up_studies(client, acme, ad_video_file):
    client.force_login(member(acme.organization, Role.ANALYST, "ann"))
    study = acme.study
    assert client.get("/studies/new/").status_code == 404
    assert client.get(f"/studies/{study.pk}/").status_code == 403
    assert client.post(f"/studies/{study.pk}/", study_form_data(study, name="Hijacked")).status_code == 403
    assert client.post(f"/studies/{study.pk}/status/close/").status_code == 403
    assert client.post(f"/studies/{study.pk}/preview/").status_code == 403
    assert client.post(f"/studies/{study.pk}/delete-participant/", {"panel_id": "x"}).status_code == 403
    study.refresh_from_db()
    assert study.name == "Spring campaign" and study.status == Study.Status.LIVE
    page = client.get("/studies/")
    assert page.status_code == 200 and b"Spring campaign" in page.content and b"New study" not in page.content
