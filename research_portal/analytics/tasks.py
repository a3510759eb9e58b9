"""Celery tasks: thin wrappers around rollups.py (autodiscovered by research_portal.celery)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from research_portal.analytics.debounce import flush_all_pending
from research_portal.analytics.live import notify_rollups_changed
from research_portal.analytics.rollups import do_reconcile_due_studies, do_refresh_session
from research_portal.deployment import ModeDependent

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, autoretry_for=(OperationalError, InterfaceError), retry_backoff=1, max_retries=6)
def refresh_session_task(session_id: int) -> bool:
    """Re-file one session under its current attributes (it completed, failed...)."""
    result = do_refresh_session(session_id, set())
    if result is not None and result.changed:
        notify_rollups_changed(result.study_id, result.ad_ids)
    return bool(result and result.changed)


@shared_task(acks_late=True)
def reconcile_rollups_task() -> int:
    """Periodic safety net (settings.CELERY_BEAT_SCHEDULE; embedded: research_portal/ops/periodic.py):
    refresh keys a killed worker left journaled, and re-file sessions whose attributes changed without a
    signal (a queryset update, a failed refresh). Dashboards only read the rollups."""
    return flush_all_pending() + do_reconcile_due_studies()


# Where frames are analysed, sessions are refreshed: inline in embedded mode, by a Celery worker in
# production.
session_refresher = ModeDependent(
    embedded=lambda: refresh_session_task, production=lambda _redis: refresh_session_task.delay
)


def enqueue_session_refresh(session_id: int) -> None:
    """Re-file a session whose attributes changed (analytics.signals), where session_refresher says."""
    try:
        session_refresher()(session_id)
    except Exception:
        # The periodic reconcile (reconcile_rollups_task) picks the session up.
        logger.exception("analytics: could not refresh session %s", session_id)
