"""Celery tasks (autodiscovered): the periodic retention purge, scheduled by CELERY_BEAT_SCHEDULE."""

from __future__ import annotations

from celery import shared_task

from research_portal.privacy.services import do_apply_retention


@shared_task(acks_late=True)
def apply_retention_task() -> dict[str, int]:
    result = do_apply_retention()
    return {
        "frame_results": result.frame_results,
        "frame_folders": result.frame_folders,
        "preview_sessions": result.preview_sessions,
    }
