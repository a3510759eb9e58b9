"""Memberships and invitations: plain functions, each in one transaction and audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from research_portal.accounts.models import Invitation, Membership, Organization, hash_token
from research_portal.privacy.audit import do_audit
from research_portal.privacy.models import AuditLog


class InvitationInvalid(Exception):
    pass


@transaction.atomic
def do_invite(organization: Organization, email: str, role: str, invited_by) -> tuple[Invitation, str]:
    """A new invitation; returns it with its token (shown once: only the token's hash is stored)."""
    token = Invitation.new_token()
    invitation = Invitation.objects.create(
        organization=organization, email=email, role=role, token_hash=hash_token(token), invited_by=invited_by
    )
    do_audit(invited_by, AuditLog.Action.MEMBER_INVITED, organization=organization, email=email, role=role)
    return invitation, token


def find_open_invitation(token: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization").filter(token_hash=hash_token(token)).first()
    )
    if invitation is None or not invitation.is_open:
        raise InvitationInvalid("This invitation link is not valid or has expired.")
    return invitation


@transaction.atomic
def do_accept_invitation(token: str, username: str, password: str):
    """Create the invited user and their membership together (or neither)."""
    invitation = Invitation.objects.select_for_update().filter(token_hash=hash_token(token)).first()
    if invitation is None or not invitation.is_open:
        raise InvitationInvalid("This invitation link is not valid or has expired.")
    user = get_user_model().objects.create_user(username=username, email=invitation.email, password=password)
    Membership.objects.create(user=user, organization=invitation.organization, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    do_audit(user, AuditLog.Action.MEMBER_JOINED, organization=invitation.organization, role=invitation.role)
    return user


@transaction.atomic
def do_remove_member(membership: Membership, actor) -> None:
    do_audit(
        actor,
        AuditLog.Action.MEMBER_REMOVED,
        organization=membership.organization,
        username=membership.user.get_username(),
        role=membership.role,
    )
    membership.delete()
