"""Celery tasks: thin wrappers around rollups.py (autodiscovered by research_portal.celery)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from research_portal.analytics.debounce import flush_all_pending
from research_portal.analytics.live import notify_rollups_changed
from research_portal.analytics.rollups import do_reconcile_study, do_refresh_session
from research_portal.studies.models import Study

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
    """Periodic safety net (e.g. Celery beat every few minutes): refresh keys a killed worker left journaled,
    and re-file sessions of live studies whose attributes changed without a signal. Dashboards also do the
    latter for their study on every load."""
    refreshed = flush_all_pending()
    for study_id in Study.objects.filter(status=Study.Status.LIVE).values_list("id", flat=True):
        refreshed += len(do_reconcile_study(study_id))
    return refreshed


def enqueue_session_refresh(session_id: int) -> None:
    """Where frames are analysed, sessions are refreshed: a Celery worker, or inline in embedded mode."""
    try:
        if settings.CAPTURE_ANALYSIS_BACKEND == "celery":
            refresh_session_task.delay(session_id)
        else:
            refresh_session_task(session_id)
    except Exception:
        # The dashboards' reconcile picks the session up on their next load.
        logger.exception("analytics: could not refresh session %s", session_id)
