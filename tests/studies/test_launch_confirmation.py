"""Launching asks first: the confirmation page says exactly what launching locks (the ads and the settings of
LOCKED_AFTER_LAUNCH, with their values) and what stays editable; only its POST launches. Once launched, every
locked thing is refused server-side with a clear 4xx, on the set-up page and in Django admin alike."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import RequestFactory

from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, Study
from research_portal.studies.services import LOCKED_AFTER_LAUNCH
from tests.studies.test_setup_pages import draft_study, study_form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready_draft(acme, ad_video_file) -> Study:
    """A draft of Acme's with two playable ads, First then Second."""
    study = draft_study(acme)
    study.capture_fps = 8
    study.save()
    for position, title in enumerate(("First", "Second")):
        ad = Ad(study=study, title=title, duration_ms=4000, position=position)
        with ad_video_file.open("rb") as video:
            ad.video.save(ad_video_file.name, video, save=False)
        ad.save()
    return study


def test_the_setup_page_asks_for_confirmation_instead_of_launching(client, alice, ready_draft):
    client.force_login(alice)
    page = client.get(f"/studies/{ready_draft.pk}/").content.decode()
    assert f'id="launch" href="/studies/{ready_draft.pk}/launch/"' in page
    assert f"/studies/{ready_draft.pk}/status/launch/" not in page
    # The old form's address launches nothing: it leads to the confirmation.
    response = client.post(f"/studies/{ready_draft.pk}/status/launch/")
    assert response.status_code == 302 and response["Location"] == f"/studies/{ready_draft.pk}/launch/"
    ready_draft.refresh_from_db()
    assert ready_draft.status == Study.Status.DRAFT


def test_the_confirmation_names_every_lock_with_its_value_and_what_stays_editable(client, alice, ready_draft):
    client.force_login(alice)
    response = client.get(f"/studies/{ready_draft.pk}/launch/")
    assert response.status_code == 200
    locked = dict(response.context["locked_settings"])
    assert set(locked) == {
        "Frames per second",
        "Neutral baseline (seconds)",
        "Ad order",
        "Usable frames needed per ad (0–1)",
        "Minimum face quality (0–1)",
        "Keep the webcam frames (opt-in; biometric data)",
        "Participant id parameter",
        "Country parameter",
    }
    assert len(locked) == len(LOCKED_AFTER_LAUNCH)
    assert locked["Frames per second"] == "8" and locked["Ad order"] == "Fixed (by position)"
    assert locked["Keep the webcam frames (opt-in; biometric data)"] == "no"
    editable = response.context["editable_settings"]
    expected = {"Name", "Countries and their quotas", "Consent text (default language)", "Complete redirect"}
    assert expected | {"Face check attempts", "Consent texts per language"} <= set(editable)
    assert not set(editable) & set(locked)
    page = response.content.decode()
    assert "<li>First" in page and "<li>Second" in page and page.index("<li>First") < page.index("<li>Second")
    assert "No ad can be added, replaced, removed or reordered after launch." in page
    assert "from DE" in page and 'id="confirm-launch"' in page
    ready_draft.refresh_from_db()
    assert ready_draft.status == Study.Status.DRAFT  # GET never writes


def test_confirming_launches_and_locks(client, alice, ready_draft):
    client.force_login(alice)
    response = client.post(f"/studies/{ready_draft.pk}/launch/", follow=True)
    assert response.redirect_chain == [(f"/studies/{ready_draft.pk}/", 302)]
    ready_draft.refresh_from_db()
    assert ready_draft.status == Study.Status.LIVE
    assert "its ads and capture settings are locked" in response.content.decode()
    audit = AuditLog.objects.filter(study=ready_draft, action=AuditLog.Action.STUDY_STATUS)
    assert audit.filter(detail__transition="launch", actor_name="alice").exists()
    # Confirming twice changes nothing more.
    again = client.post(f"/studies/{ready_draft.pk}/launch/")
    assert again.status_code == 409 and "A live study cannot launch." in again.content.decode()
    assert "was launched already" in client.get(f"/studies/{ready_draft.pk}/launch/").content.decode()


def test_a_draft_without_ads_is_told_what_to_do_and_cannot_be_confirmed(client, alice, acme):
    client.force_login(alice)
    study = draft_study(acme)
    page = client.get(f"/studies/{study.pk}/launch/").content.decode()
    assert "Before launching, upload at least one ad." in page and 'id="confirm-launch"' not in page
    response = client.post(f"/studies/{study.pk}/launch/")
    assert response.status_code == 409
    assert "Before launching, upload at least one ad." in response.content.decode()
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT


def test_only_the_studys_admins_reach_the_confirmation(client, bob, charlie, ready_draft):
    client.force_login(bob)  # Acme's analyst
    assert client.get(f"/studies/{ready_draft.pk}/launch/").status_code == 403
    assert client.post(f"/studies/{ready_draft.pk}/launch/").status_code == 403
    client.force_login(charlie)  # Rival Insights' admin
    assert client.get(f"/studies/{ready_draft.pk}/launch/").status_code == 404
    assert client.post(f"/studies/{ready_draft.pk}/launch/").status_code == 404
    ready_draft.refresh_from_db()
    assert ready_draft.status == Study.Status.DRAFT


# What each locked setting is changed to; every one is refused on its field once the study is live.
LOCKED_CHANGES = {
    "capture_fps": "10",
    "baseline_seconds": "3",
    "min_usable_frame_ratio": "0.5",
    "min_face_quality": "0.5",
    "ad_order": "random",
    "store_frames": "on",
    "participant_id_param": "rid",
    "country_param": "cc",
}


def test_every_locked_setting_has_a_change_to_try():
    assert set(LOCKED_CHANGES) == set(LOCKED_AFTER_LAUNCH)


@pytest.mark.parametrize("name", sorted(LOCKED_CHANGES))
def test_a_launched_study_refuses_each_locked_setting_on_its_field(client, alice, acme, name):
    client.force_login(alice)
    study = acme.study  # live
    before = getattr(study, name)
    response = client.post(f"/studies/{study.pk}/", study_form_data(study, **{name: LOCKED_CHANGES[name]}))
    assert response.status_code == 400
    errors = response.context["form"].errors[name]
    assert errors == [
        f"This study has been launched, so {LOCKED_AFTER_LAUNCH[name]} can no longer change: sessions "
        "captured before and after would not be comparable."
    ]
    study.refresh_from_db()
    assert getattr(study, name) == before


def test_a_launched_studys_ads_refuse_upload_move_and_removal_with_4xx(client, alice, acme, ad_video_file):
    client.force_login(alice)
    study = acme.study
    second = Ad(study=study, title="Second", duration_ms=4000, position=1)
    with ad_video_file.open("rb") as video:
        second.video.save(ad_video_file.name, video, save=False)
    second.save()
    with ad_video_file.open("rb") as video:
        upload = client.post(f"/studies/{study.pk}/ads/", {"title": "Extra", "video": video})
    assert upload.status_code == 400
    move = client.post(f"/studies/{study.pk}/ads/{second.pk}/move/up/")
    remove = client.post(f"/studies/{study.pk}/ads/{acme.ad.pk}/remove/")
    for response in (move, remove):
        assert response.status_code == 409
        assert "would mix sessions that saw different ads" in response.content.decode()
    assert list(study.ads.order_by("position").values_list("title", flat=True)) == ["Spring ad", "Second"]


def admin_form(user, study: Study, **changes):
    """Django admin's change form of `study`, bound to its saved values with `changes`."""
    request = RequestFactory().post("/")
    request.user = user
    model_admin = admin.site._registry[Study]
    form_class = model_admin.get_form(request, study, change=True)
    data = {name: getattr(study, name) for name in form_class.base_fields}
    data.update(organization=study.organization_id, **changes)
    return form_class(data, instance=study)


def test_django_admin_keeps_the_same_locks(sam, acme):
    study = acme.study
    refused = admin_form(sam, study, capture_fps=10)
    assert not refused.is_valid()
    assert "the frame rate can no longer change" in refused.errors["capture_fps"][0]
    assert admin_form(sam, study, name="Spring campaign (wave 2)").is_valid()
    assert admin_form(sam, study, status=Study.Status.PAUSED).is_valid()  # the status is staff's to change
    draft = draft_study(acme)
    assert admin_form(sam, draft, capture_fps=10).is_valid()
