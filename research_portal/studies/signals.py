"""Access changes of studies and ads announced to open sockets, after commit (see accounts/signals.py)."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from research_portal.accounts.signals import announce_access_change
from research_portal.studies.models import Ad, Study


def study_access_group(study_id: int) -> str:
    return f"access-study-{study_id}"


def ad_access_group(ad_id: int) -> str:
    return f"access-ad-{ad_id}"


@receiver(post_save, sender=Study, dispatch_uid="access-study-saved")
@receiver(post_delete, sender=Study, dispatch_uid="access-study-deleted")
def study_changed(sender, instance: Study, created: bool = False, **kwargs) -> None:
    if not created:  # e.g. moved to another organisation in admin
        announce_access_change(study_access_group(instance.pk))


@receiver(post_save, sender=Ad, dispatch_uid="access-ad-saved")
@receiver(post_delete, sender=Ad, dispatch_uid="access-ad-deleted")
def ad_changed(sender, instance: Ad, created: bool = False, **kwargs) -> None:
    if not created:  # moved to another study, or removed
        announce_access_change(ad_access_group(instance.pk))
