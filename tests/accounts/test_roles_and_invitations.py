"""Organisations and roles: admins manage studies and invite users, analysts read; invitations are one-time,
hashed and create the user and membership together."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

from research_portal.accounts.models import Invitation, Membership, Organization, Role, hash_token
from research_portal.privacy.models import AuditLog
from research_portal.studies.permissions import (
    check_can_manage_study,
    check_can_view_study,
    studies_managed_by,
    studies_visible_to,
)
from tests.support.people import PASSWORD, member, staff_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def rival(acme):
    from research_portal.studies.models import Study

    organization = Organization.objects.create(name="Rival Insights")
    study = Study.objects.create(organization=organization, name="Rival secret study")
    return organization, study


def test_roles_decide_what_a_user_sees_and_changes(acme, rival):
    rival_org, rival_study = rival
    admin = member(acme.organization, Role.ADMIN, "alice")
    analyst = member(acme.organization, Role.ANALYST, "bob")
    outsider = member(rival_org, Role.ADMIN, "charlie")
    superuser = staff_user()
    acme_ids = {acme.study.pk, acme.other_study.pk}

    assert set(studies_visible_to(admin).values_list("pk", flat=True)) == acme_ids
    assert set(studies_visible_to(analyst).values_list("pk", flat=True)) == acme_ids
    assert set(studies_managed_by(admin).values_list("pk", flat=True)) == acme_ids
    assert not studies_managed_by(analyst).exists()
    assert set(studies_visible_to(outsider).values_list("pk", flat=True)) == {rival_study.pk}
    assert studies_visible_to(superuser).count() == 3

    check_can_manage_study(admin, acme.study)
    check_can_view_study(analyst, acme.study)
    with pytest.raises(PermissionDenied):
        check_can_manage_study(analyst, acme.study)  # own organisation: 403, the study exists for them
    with pytest.raises(Http404):
        check_can_view_study(outsider, acme.study)  # other organisation: 404, existence not revealed
    with pytest.raises(Http404):
        check_can_manage_study(outsider, acme.study)


def test_inactive_and_anonymous_users_see_nothing(acme):
    from django.contrib.auth.models import AnonymousUser

    admin = member(acme.organization, Role.ADMIN, "alice")
    admin.is_active = False
    admin.save()
    assert not studies_visible_to(admin).exists()
    assert not studies_visible_to(AnonymousUser()).exists()


def test_admin_invites_an_analyst_who_joins_with_the_link(client, acme):
    admin = member(acme.organization, Role.ADMIN, "ada")
    client.force_login(admin)
    response = client.post(
        f"/accounts/team/{acme.organization.pk}/", {"email": "Nina@Example.org", "role": "analyst"}
    )
    assert response.status_code == 200
    link = re.search(r'id="invite-link" value="([^"]+)"', response.content.decode())[1]
    token = link.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get()
    assert invitation.email == "nina@example.org" and invitation.role == Role.ANALYST
    # Only the hash is stored; the token is 256 bits.
    assert invitation.token_hash == hash_token(token) and token not in invitation.token_hash
    assert len(token) >= 43
    assert AuditLog.objects.filter(
        action=AuditLog.Action.MEMBER_INVITED, organization=acme.organization
    ).exists()

    client.logout()
    page = client.get(f"/accounts/invite/{token}/")
    assert page.status_code == 200 and b"Join Acme Research" in page.content
    response = client.post(
        f"/accounts/invite/{token}/",
        {
            "username": "nina",
            "password1": "correct horse battery 93",
            "password2": "correct horse battery 93",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/studies/"
    nina = get_user_model().objects.get(username="nina")
    assert nina.email == "nina@example.org"
    assert Membership.objects.get(user=nina).role == Role.ANALYST
    assert client.get("/studies/").status_code == 200
    # The link works once.
    client.logout()
    assert client.get(f"/accounts/invite/{token}/").status_code == 404


def test_bad_invitation_input_creates_nothing(client, acme):
    admin = member(acme.organization, Role.ADMIN, "ada")
    _invitation, token = __import__("research_portal.accounts.services", fromlist=["do_invite"]).do_invite(
        acme.organization, "x@example.org", Role.ANALYST, admin
    )
    users_before = get_user_model().objects.count()
    response = client.post(
        f"/accounts/invite/{token}/", {"username": "ada", "password1": "123", "password2": "1234"}
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert errors["username"] == ["This username is taken."]
    assert errors["password2"] == ["The two passwords differ."]
    response = client.post(
        f"/accounts/invite/{token}/", {"username": "x y!", "password1": "123", "password2": "123"}
    )
    errors = response.context["form"].errors
    assert "username" in errors and "password1" in errors  # too short, too common, entirely numeric
    assert get_user_model().objects.count() == users_before
    assert Membership.objects.filter(organization=acme.organization).count() == 1

    client.force_login(admin)
    response = client.post(
        f"/accounts/team/{acme.organization.pk}/", {"email": "not-an-email", "role": "boss"}
    )
    assert response.status_code == 400
    assert set(response.context["form"].errors) == {"email", "role"}
    response = client.post(
        f"/accounts/team/{acme.organization.pk}/", {"email": "ada@x.test", "role": "admin"}
    )
    assert response.context["form"].errors["email"] == [
        "This person is already a member of the organisation."
    ]
    assert Invitation.objects.count() == 1


def test_expired_or_unknown_invitations_are_refused(client, acme):
    from research_portal.accounts.services import do_invite

    invitation, token = do_invite(acme.organization, "late@example.org", Role.ADMIN, None)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert client.get(f"/accounts/invite/{token}/").status_code == 404
    response = client.post(
        f"/accounts/invite/{token}/",
        {
            "username": "late",
            "password1": "correct horse battery 93",
            "password2": "correct horse battery 93",
        },
    )
    assert response.status_code == 404
    assert client.get("/accounts/invite/" + "A" * 43 + "/").status_code == 404
    assert not get_user_model().objects.filter(username="late").exists()


def test_only_admins_invite_and_remove_members(client, acme):
    admin = member(acme.organization, Role.ADMIN, "ada")
    analyst = member(acme.organization, Role.ANALYST, "ann")
    client.force_login(analyst)
    page = client.get(f"/accounts/team/{acme.organization.pk}/")
    assert page.status_code == 200 and b"Invite someone" not in page.content
    assert (
        client.post(
            f"/accounts/team/{acme.organization.pk}/", {"email": "e@x.org", "role": "admin"}
        ).status_code
        == 403
    )
    membership = Membership.objects.get(user=admin)
    assert client.post(f"/accounts/members/{membership.pk}/remove/").status_code == 403
    assert not Invitation.objects.exists()

    client.force_login(admin)
    analyst_membership = Membership.objects.get(user=analyst)
    assert client.post(f"/accounts/members/{analyst_membership.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(user=analyst).exists()
    assert AuditLog.objects.filter(action=AuditLog.Action.MEMBER_REMOVED, detail__username="ann").exists()


def test_sign_in_and_out_with_the_portal_pages(client, acme):
    member(acme.organization, Role.ADMIN, "ada")
    assert client.get("/studies/")["Location"].startswith("/accounts/login/")
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b"csrfmiddlewaretoken" in page.content
    response = client.post("/accounts/login/", {"username": "ada", "password": "wrong"})
    assert response.status_code == 200 and response.context["form"].non_field_errors()
    response = client.post("/accounts/login/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/studies/"
    assert b"Spring campaign" in client.get("/studies/").content
    assert client.get("/accounts/logout/").status_code == 405  # a link cannot sign anyone out
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/studies/").status_code == 302
