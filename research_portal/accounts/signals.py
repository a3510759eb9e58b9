"""Access changes announced to open sockets, after commit.

Pages check access on every request; a socket checked it once, at connect. Whenever something that decides
access changes (a membership, a user's account, sign-out; a study's organisation and an ad's study in
studies/signals.py), the groups below get {"type": "access.changed"} once the transaction commits, and every
socket in them re-checks its access at once (analytics.consumers). A change made without signals (a queryset
.update(), raw SQL) is caught by the sockets' periodic re-check instead (ANALYTICS_LIVE_ACCESS_RECHECK_S).
"""

from __future__ import annotations

import logging

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from research_portal.accounts.models import Membership
from research_portal.events import send_group_event

logger = logging.getLogger(__name__)

ACCESS_CHANGED = "access.changed"  # handled by the sockets' access_changed method


def user_access_group(user_id: int) -> str:
    return f"access-user-{user_id}"


def announce_access_change(group: str) -> None:
    """After the current transaction commits, tell the group's sockets to re-check their access."""

    def send() -> None:
        try:
            send_group_event(group, {"type": ACCESS_CHANGED})
        except Exception:
            # The change itself is committed; sockets still notice it at their next periodic re-check.
            logger.exception("could not announce an access change to %s", group)

    transaction.on_commit(send)


@receiver(post_save, sender=Membership, dispatch_uid="access-membership-saved")
@receiver(post_delete, sender=Membership, dispatch_uid="access-membership-deleted")
def membership_changed(sender, instance: Membership, created: bool = False, **kwargs) -> None:
    if not created:  # a new membership takes nobody's access away
        announce_access_change(user_access_group(instance.user_id))


@receiver(post_save, sender=get_user_model(), dispatch_uid="access-user-saved")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="access-user-deleted")
def user_changed(sender, instance, created: bool = False, update_fields=None, **kwargs) -> None:
    # Deactivation, superuser status, a new password (which ends the user's other sessions); not the
    # last_login stamp written at every sign-in.
    if not created and set(update_fields or ()) != {"last_login"}:
        announce_access_change(user_access_group(instance.pk))


@receiver(post_delete, sender=Session, dispatch_uid="access-session-deleted")
def session_deleted(sender, instance: Session, **kwargs) -> None:
    # Sign-out flushes the session (deletes its row) after user_logged_out is sent, so this, not that
    # signal, is when the session's sockets lose it. Database sessions only (the shipped SESSION_ENGINE).
    try:
        user_id = instance.get_decoded().get(SESSION_KEY)
    except Exception:  # undecodable (e.g. signed with an old key): it signed nobody in
        return
    if user_id:
        announce_access_change(user_access_group(int(user_id)))
