"""Study options (docs/security.md, L8) on the set-up page and in Django admin: panel link signing (secret,
parameter names, max age) and how long an entry holds its quota seat."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from django.test import Client

from research_portal.accounts.models import Role
from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import Study
from tests.studies.test_ad_upload import study_form
from tests.studies.test_setup_pages import study_form_data, valid_study
from tests.support.people import member

pytestmark = pytest.mark.django_db

SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def admin_client(client, acme):
    client.force_login(member(acme.organization, Role.ADMIN, "ada"))
    return client


def test_an_admin_sets_up_link_signing_and_seats_and_the_links_say_what_to_sign(admin_client, acme):
    response = admin_client.post(
        "/studies/new/",
        valid_study(
            link_signing_secret=f"  {SECRET}  ",
            link_signature_param="hash",
            link_timestamp_param="t",
            link_max_age_minutes="120",
            quota_seat_minutes="45",
        ),
    )
    assert response.status_code == 302, response.context["form"].errors
    study = Study.objects.get(name="Summer launch")
    assert (study.link_signing_secret, study.link_signature_param, study.link_timestamp_param) == (
        SECRET,
        "hash",
        "t",
    )
    assert (study.link_max_age_minutes, study.quota_seat_minutes) == (120, 45)
    page = admin_client.get(f"/studies/{study.pk}/")
    links = dict(page.context["links"])
    assert (
        links["DE"]
        == f"http://testserver/s/{study.public_id}/?rid=PARTICIPANT_ID&cc=DE&t=UNIX_TIME&hash=HMAC_SHA256"
    )
    assert b'id="link-signing"' in page.content and b"HMAC-SHA256" in page.content
    # The link works once the panel fills it in and signs it.
    query = "cc=DE&rid=r-1&t=" + str(int(time.time()))
    signature = hmac.new(SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
    study.status = Study.Status.LIVE
    study.save()
    assert Client().get(f"/s/{study.public_id}/?{query}&hash={signature}").status_code == 302


def test_the_defaults_keep_links_unsigned_and_hold_seats_for_30_minutes(admin_client):
    assert admin_client.post("/studies/new/", valid_study()).status_code == 302
    study = Study.objects.get(name="Summer launch")
    assert (study.link_signing_secret, study.link_signature_param, study.link_timestamp_param) == (
        "",
        "sig",
        "ts",
    )
    assert (study.link_max_age_minutes, study.quota_seat_minutes) == (0, 30)
    assert not study.signs_links


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"link_signing_secret": "short"}, "link_signing_secret", "32 to 128 printable ASCII"),
        ({"link_signing_secret": "a b" * 20}, "link_signing_secret", "without spaces"),
        ({"link_signing_secret": "é" * 40}, "link_signing_secret", "printable ASCII"),
        ({"link_signing_secret": "x" * 129}, "link_signing_secret", "at most 128"),
        (
            {"link_signing_secret": SECRET, "link_signature_param": "rid"},
            "link_signature_param",
            "must differ from the participant id one",
        ),
        (
            {"link_signing_secret": SECRET, "link_timestamp_param": "cc"},
            "link_timestamp_param",
            "must differ from the country one",
        ),
        (
            {"link_signing_secret": SECRET, "link_timestamp_param": "sig"},
            "link_timestamp_param",
            "must differ from the signature one",
        ),
        ({"link_signature_param": "s i g"}, "link_signature_param", "letters, digits and _"),
        ({"link_max_age_minutes": "-1"}, "link_max_age_minutes", "greater than or equal to 0"),
        ({"link_max_age_minutes": "50000"}, "link_max_age_minutes", "less than or equal to 43200"),
        ({"quota_seat_minutes": "2000"}, "quota_seat_minutes", "less than or equal to 1440"),
        ({"quota_seat_minutes": "x"}, "quota_seat_minutes", "whole number"),
    ],
)
def test_bad_signing_and_seat_options_are_refused_on_their_field(admin_client, overrides, field, message):
    response = admin_client.post("/studies/new/", valid_study(**overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert message.lower() in " ".join(errors[field]).lower()
    assert not Study.objects.filter(name="Summer launch").exists()


def test_a_launched_study_can_turn_signing_on_and_rotate_its_secret(admin_client, acme):
    study = acme.study  # live
    ParticipantSession.objects.create(study=study, external_participant_id="p-1")
    response = admin_client.post(f"/studies/{study.pk}/", study_form_data(study, link_signing_secret=SECRET))
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.signs_links
    # The audit log names the changed field, never the secret itself.
    from research_portal.privacy.models import AuditLog

    entry = AuditLog.objects.filter(study=study, action=AuditLog.Action.STUDY_CHANGED).latest("id")
    assert "link_signing_secret" in entry.detail["fields"] and SECRET not in str(entry.detail)


def test_analysts_never_see_the_secret(client, acme):
    acme.study.link_signing_secret = SECRET
    acme.study.save()
    client.force_login(member(acme.organization, Role.ANALYST, "ann"))
    assert client.get(f"/studies/{acme.study.pk}/").status_code == 403
    for url in (f"/analytics/studies/{acme.study.pk}/", f"/analytics/studies/{acme.study.pk}/data.json"):
        response = client.get(url)
        assert response.status_code == 200 and SECRET.encode() not in response.content


def test_django_admin_sets_the_options_with_the_same_checks(acme, sam):
    admin = Client()
    admin.force_login(sam)
    form = study_form(
        acme.organization, link_signing_secret=SECRET, link_max_age_minutes=60, quota_seat_minutes=0
    )
    response = admin.post("/admin/studies/study/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    study = acme.organization.studies.get(name="Summer")
    assert (study.link_signing_secret, study.link_max_age_minutes, study.quota_seat_minutes) == (
        SECRET,
        60,
        0,
    )
    clash = study_form(
        acme.organization, name="Clash", link_signing_secret=SECRET, link_signature_param="pid"
    )
    response = admin.post("/admin/studies/study/add/", clash)
    assert response.status_code == 200 and b"must differ from the participant id one" in response.content
    short = study_form(acme.organization, name="Short", link_signing_secret="short")
    assert b"32 to 128 printable ASCII" in admin.post("/admin/studies/study/add/", short).content
    assert not Study.objects.filter(name__in=["Clash", "Short"]).exists()
