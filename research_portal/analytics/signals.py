"""Rollups follow what capture stores and changes: each bulk insert of readings (capture's `frames_stored`)
updates the per-second rollups and the live dashboards, and the live views' provisional figures
(provisional.py); completion and exclusion (capture, admin) re-file a session under its new attributes;
deletion takes it out of the sums. Both are also caught by the periodic reconcile
(tasks.reconcile_rollups_task), so a missed signal (e.g. a queryset .update()) only delays the change."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from research_portal.analytics.debounce import do_update_rollups
from research_portal.analytics.models import SessionRollup
from research_portal.analytics.provisional import do_show_live
from research_portal.analytics.rollups import do_forget_session
from research_portal.analytics.tasks import enqueue_session_refresh
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.signals import frames_stored

logger = logging.getLogger(__name__)


@receiver(post_save, sender=ParticipantSession, dispatch_uid="analytics-session-saved")
def session_saved(sender, instance: ParticipantSession, created: bool, **kwargs) -> None:
    if created:
        return
    try:
        filed = (
            SessionRollup.objects.filter(pk=instance.pk)
            .values_list("country", "device_type", "completed")
            .first()
        )
    except Exception:
        logger.exception("analytics: could not read the rollup state of session %s", instance.pk)
        return
    current = (instance.country, instance.device_type, instance.state == ParticipantSession.State.COMPLETED)
    if filed is not None and tuple(filed) != current:
        transaction.on_commit(lambda: enqueue_session_refresh(instance.pk))


@receiver(pre_delete, sender=ParticipantSession, dispatch_uid="analytics-session-deleted")
def session_deleted(sender, instance: ParticipantSession, **kwargs) -> None:
    # Inside the deletion's transaction: the sums lose the session exactly when its rows go.
    do_forget_session(instance.pk)


@receiver(frames_stored, sender=FrameResult, dispatch_uid="analytics-frames-stored")
def frames_were_stored(sender, rows: list[FrameResult], **kwargs) -> None:
    do_update_rollups(rows)  # never raises: a failure is logged and the periodic reconcile catches up
    do_show_live(rows)  # the live views' provisional figures, within a second or two (provisional.py)
