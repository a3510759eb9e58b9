"""The portal's top navigation between set-up, dashboards and the team page (only links the user may use, on
the set-up and the analytics pages alike), and the team page saying what its members table is and how to
invite."""

from __future__ import annotations

import re

import pytest

from research_portal.accounts.models import Organization, Role
from tests.support.people import member

pytestmark = pytest.mark.django_db


def nav_links(html: str) -> list[tuple[str, str]]:
    """(label, href) of the top navigation, in order."""
    nav = re.search(r'<nav class="mainnav" aria-label="Portal">(.*?)</nav>', html, re.S)
    if nav is None:
        return []
    return [(label, href) for href, label in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav[1])]


MEMBER_LINKS = [("Studies", "/studies/"), ("Dashboards", "/analytics/"), ("Team", "/accounts/team/")]


@pytest.mark.parametrize("page", ["/studies/", "/analytics/", "/accounts/team/"])
def test_members_get_the_same_links_on_every_signed_in_page(client, alice, bob, page):
    for user in (alice, bob):  # Acme's admin and its analyst may open all three
        client.force_login(user)
        response = client.get(page, follow=True)
        assert response.status_code == 200
        assert nav_links(response.content.decode()) == MEMBER_LINKS


def test_staff_also_get_django_admin(client, sam):
    client.force_login(sam)
    assert nav_links(client.get("/studies/").content.decode()) == [*MEMBER_LINKS, ("Admin", "/admin/")]


def test_a_user_of_no_organisation_gets_no_links_to_empty_pages(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="x" * 20))
    assert nav_links(client.get("/studies/").content.decode()) == []


def test_the_current_section_is_marked(client, alice, acme):
    client.force_login(alice)
    pages = {
        "/studies/": "Studies",
        f"/studies/{acme.study.pk}/": "Studies",
        f"/studies/{acme.study.pk}/launch/": "Studies",
        "/analytics/": "Dashboards",
        f"/analytics/studies/{acme.study.pk}/": "Dashboards",
        f"/accounts/team/{acme.organization.pk}/": "Team",
    }
    for url, current in pages.items():
        html = client.get(url).content.decode()
        marked = re.findall(r'<a href="[^"]+" aria-current="page">([^<]+)</a>', html)
        assert current in marked, url


def test_the_team_page_explains_its_members_table_and_how_to_invite(client, alice, bob, acme):
    client.force_login(alice)
    html = client.get(f"/accounts/team/{acme.organization.pk}/").content.decode()
    assert "Everyone who can sign in to Acme Research's studies, with their role" in html
    assert "create an invitation with the form beside this table and send them its link" in html
    client.force_login(bob)
    html = client.get(f"/accounts/team/{acme.organization.pk}/").content.decode()
    assert "An admin of Acme Research invites new members." in html and "invite-form" not in html


def test_an_organisation_without_members_says_so(client, sam):
    empty = Organization.objects.create(name="Fresh Agency")
    client.force_login(sam)
    html = client.get(f"/accounts/team/{empty.pk}/").content.decode()
    assert 'id="no-members"' in html and "No members yet. Invite the first one" in html


def test_the_invitation_link_has_a_copy_button(client, alice, acme):
    client.force_login(alice)
    response = client.post(
        f"/accounts/team/{acme.organization.pk}/", {"email": "dora@x.test", "role": Role.ANALYST}
    )
    html = response.content.decode()
    assert 'id="invite-link"' in html and 'data-copy="invite-link"' in html
    assert '<script src="/static/setup/copy.js"></script>' in html


def test_an_analyst_of_another_organisation_sees_only_their_own_team(client, acme):
    rival = Organization.objects.create(name="Rival Insights")
    client.force_login(member(rival, Role.ANALYST, "rita"))
    assert client.get(f"/accounts/team/{acme.organization.pk}/").status_code == 404
