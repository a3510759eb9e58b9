"""The people of the tests, one cast for every app (healthchecks-style names):

- Alice, admin of Acme Research (the `acme` fixture's organisation): sets up its studies, invites members;
- Bob, analyst of Acme Research: reads its dashboards and exports, changes nothing;
- Charlie, admin of the rival organisation Rival Insights: must never see anything of Acme's;
- Sam, staff (a superuser): the operator, who sees every organisation.

Members are plain users (not staff): access comes from accounts.Membership alone. A test that needs someone
else names them: `member(organization, role, "dora")`.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model

from research_portal.accounts.models import Membership, Organization, Role

PASSWORD = "a-long-test-password-7421"


def member(organization: Organization, role: str, username: str):
    """A user with one membership: `role` in `organization`; signs in with PASSWORD."""
    user = get_user_model().objects.create_user(
        username=username, password=PASSWORD, email=f"{username}@x.test"
    )
    Membership.objects.create(user=user, organization=organization, role=role)
    return user


def staff_user(username: str = "sam"):
    """A superuser (the operator); signs in with PASSWORD."""
    return get_user_model().objects.create_superuser(username, f"{username}@x.test", PASSWORD)


@dataclass(frozen=True)
class Cast:
    alice: object  # admin of Acme Research
    bob: object  # analyst of Acme Research
    charlie: object  # admin of Rival Insights
    sam: object  # staff
    rival: Organization  # Charlie's organisation


def cast_of(acme: Organization) -> Cast:
    """Alice and Bob in `acme`, Charlie in a new Rival Insights, and Sam."""
    rival = Organization.objects.create(name="Rival Insights")
    return Cast(
        alice=member(acme, Role.ADMIN, "alice"),
        bob=member(acme, Role.ANALYST, "bob"),
        charlie=member(rival, Role.ADMIN, "charlie"),
        sam=staff_user(),
        rival=rival,
    )
