"""Participant data rights: delete one participant's data, a whole study's, and raw data past retention.

Deleting a ParticipantSession cascades to its FrameResults and SessionEvents; analytics' pre_delete signal
(analytics/signals.py -> rollups.do_forget_session) takes the session out of the anonymous SecondCell sums in
the same transaction, and its own rollup rows go with the cascade. Files on disk (stored frames, ad videos)
are removed once the transaction has committed, so a rolled-back deletion never loses a file.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.storage import stored_frames_dir
from research_portal.privacy.audit import do_audit
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, Study

# A preview session holds its admin's own face readings; kept a day for a look at the dashboards, no more.
PREVIEW_RETENTION = timedelta(days=1)


def remove_stored_frames(session_ids: list[int]) -> int:
    removed = 0
    for session_id in session_ids:
        folder = stored_frames_dir(session_id)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def panel_id_fingerprint(panel_id: str) -> str:
    """What the audit log keeps of a deleted participant's panel id: enough to answer "was X deleted?",
    without keeping the identifier itself."""
    return hashlib.sha256(panel_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Deleted:
    sessions: int
    frame_results: int
    events: int

    def as_dict(self) -> dict[str, int]:
        return {"sessions": self.sessions, "frame_results": self.frame_results, "events": self.events}


def _delete_sessions(sessions) -> Deleted:
    session_ids = list(sessions.values_list("pk", flat=True))
    counted = Deleted(
        sessions=len(session_ids),
        frame_results=FrameResult.objects.filter(session_id__in=session_ids).count(),
        events=SessionEvent.objects.filter(session_id__in=session_ids).count(),
    )
    ParticipantSession.objects.filter(pk__in=session_ids).delete()
    transaction.on_commit(lambda: remove_stored_frames(session_ids))
    return counted


@transaction.atomic
def do_delete_participant(study: Study, panel_id: str, actor) -> Deleted:
    """Delete every session of one panel participant in a study, with all readings, events, stored frames
    and their share of the analytics aggregates. Returns what was deleted (all zero if nothing matched)."""
    panel_id = panel_id.strip()
    deleted = _delete_sessions(study.sessions.filter(external_participant_id=panel_id))
    do_audit(
        actor,
        AuditLog.Action.DELETE_PARTICIPANT,
        study=study,
        panel_id_sha256=panel_id_fingerprint(panel_id),
        **deleted.as_dict(),
    )
    return deleted


@transaction.atomic
def do_delete_study(study: Study, actor) -> Deleted:
    """Delete a study with everything in it: sessions and their data, ads and their video files, quotas and
    consent versions. The audit log keeps the study's name and what was deleted."""
    deleted = _delete_sessions(study.sessions.all())
    video_names = [ad.video.name for ad in study.ads.all() if ad.video]
    do_audit(
        actor,
        AuditLog.Action.DELETE_STUDY,
        study=study,
        study_id=study.pk,
        ads=len(video_names),
        **deleted.as_dict(),
    )
    study.delete()
    storage = Ad._meta.get_field("video").storage

    def remove_videos() -> None:
        for name in video_names:
            storage.delete(name)

    transaction.on_commit(remove_videos)
    return deleted


@dataclass(frozen=True)
class RetentionResult:
    frame_results: int = 0
    frame_folders: int = 0
    preview_sessions: int = 0


@transaction.atomic
def do_apply_retention_to_study(study: Study, now=None) -> RetentionResult:
    """Delete the study's raw per-frame readings older than `retention_days` and its stored frames older than
    `frame_retention_days` (counted from the session's start); the per-second aggregates stay."""
    now = now or timezone.now()
    old_sessions = study.sessions.filter(created_at__lt=now - timedelta(days=study.retention_days))
    frame_results, _ = FrameResult.objects.filter(session__in=old_sessions).delete()
    frame_session_ids = list(
        study.sessions.filter(created_at__lt=now - timedelta(days=study.frame_retention_days)).values_list(
            "pk", flat=True
        )
    )
    folders = sum(1 for session_id in frame_session_ids if stored_frames_dir(session_id).is_dir())
    transaction.on_commit(lambda: remove_stored_frames(frame_session_ids))
    previews = study.sessions.filter(is_preview=True, created_at__lt=now - PREVIEW_RETENTION)
    preview_count = previews.count()
    if preview_count:
        previews.delete()
    result = RetentionResult(frame_results, folders, preview_count)
    if frame_results or folders or preview_count:
        do_audit(
            None,
            AuditLog.Action.RETENTION_PURGE,
            study=study,
            frame_results=frame_results,
            frame_folders=folders,
            preview_sessions=preview_count,
            retention_days=study.retention_days,
            frame_retention_days=study.frame_retention_days,
        )
    return result


def do_apply_retention(now=None) -> RetentionResult:
    """Apply every study's retention periods (the periodic Celery task and `manage.py apply_retention`)."""
    totals = RetentionResult()
    for study in Study.objects.select_related("organization").iterator():
        result = do_apply_retention_to_study(study, now)
        totals = RetentionResult(
            totals.frame_results + result.frame_results,
            totals.frame_folders + result.frame_folders,
            totals.preview_sessions + result.preview_sessions,
        )
    return totals
