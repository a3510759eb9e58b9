"""Writing the audit log: one function, called by every export, deletion and set-up change."""

from __future__ import annotations

from research_portal.privacy.models import AuditLog


def do_audit(actor, action: str, study=None, organization=None, **detail) -> AuditLog:
    """Record that `actor` (a user, or None for the system) did `action` on `study` / `organization`."""
    if organization is None and study is not None:
        organization = study.organization
    signed_in = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditLog.objects.create(
        actor=actor if signed_in else None,
        actor_name=actor.get_username() if signed_in else "system",
        organization=organization,
        study=study if study is not None and study.pk else None,
        study_name=study.name if study is not None else "",
        action=action,
        detail=detail,
    )
