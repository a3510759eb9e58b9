"""Ending a viewing: wait for the last readings, then decide whether the session is a validated complete."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.participation import QuotaFull, check_quota_seat, do_end_session, do_record_event
from research_portal.studies.models import Ad

State = ParticipantSession.State

# The last batch is acked when queued; its readings land a moment later. Wait this long after it...
STORE_GRACE = timedelta(seconds=2)
# ...but never longer than this after viewing ended, so a lost batch cannot hold a participant forever.
MAX_VALIDATION_WAIT = timedelta(seconds=30)
# A run of frames without a face at least this long is recorded as a face_lost event.
FACE_LOST_EVENT_MS = 3000


def do_finish_viewing(session: ParticipantSession) -> None:
    """The browser played every ad; the socket stops taking frames and validation can begin."""
    if session.is_capturing and session.checks_passed_at is not None:
        session.completed_at = timezone.now()
        session.save(update_fields=["completed_at"])


def check_ready_to_validate(session: ParticipantSession, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    if session.has_ended or session.completed_at is None:
        return False
    if now - session.completed_at >= MAX_VALIDATION_WAIT or session.last_enqueued_seq is None:
        return True
    last_stored = FrameResult.objects.filter(session=session, seq=session.last_enqueued_seq).exists()
    return last_stored and now - session.last_enqueued_at >= STORE_GRACE


def longest_run_without_face(face_found: np.ndarray) -> int:
    """Length of the longest run of False in a boolean array (vectorised run-length)."""
    missing = np.concatenate([[0], (~face_found).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(missing))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def ad_usability_failures(session: ParticipantSession) -> list[str]:
    """Per ad of the session: a reason string when it has too few usable frames. Records face_lost events."""
    study = session.study
    ads = Ad.objects.in_bulk(session.ad_sequence)
    failures = []
    for ad_id in session.ad_sequence:
        ad = ads.get(ad_id)
        if ad is None:
            continue
        frames = FrameResult.objects.filter(session=session, ad=ad)
        expected = max(1, round(ad.duration_ms / 1000 * study.capture_fps))
        usable = frames.filter(face_found=True, quality__gte=study.min_face_quality).count()
        if usable < study.min_usable_frame_ratio * expected:
            failures.append(f"{ad.title}: {usable} usable of {expected} expected frames")
        face_found = np.fromiter(frames.order_by("seq").values_list("face_found", flat=True), bool)
        lost_frames = longest_run_without_face(face_found)
        lost_ms = int(lost_frames * 1000 / study.capture_fps)
        if lost_ms >= FACE_LOST_EVENT_MS:
            do_record_event(
                session.pk, SessionEvent.Name.FACE_LOST, ad.pk, detail=f"{lost_ms} ms without a face"
            )
    return failures


@transaction.atomic
def do_validate_session(session: ParticipantSession) -> None:
    """Completed, Failed (too few usable frames) or, when its country's quota was filled by others first
    (a seat that expired, or a study that holds none), Over quota: quotas hold at the edge."""
    session = ParticipantSession.objects.select_for_update().select_related("study").get(pk=session.pk)
    if session.has_ended:
        return
    failures = ad_usability_failures(session)
    if failures:
        do_end_session(session, State.FAILED, "not enough usable frames: " + "; ".join(failures))
        return
    try:
        if not session.is_preview:
            check_quota_seat(session.study, session.country, session)
    except QuotaFull as full:
        do_end_session(session, State.OVER_QUOTA, full.reason)
    else:
        do_end_session(session, State.COMPLETED)


def session_outcome(session: ParticipantSession) -> ParticipantSession:
    """The session, validated first if viewing has ended and its readings are in."""
    if check_ready_to_validate(session):
        do_validate_session(session)
        session.refresh_from_db()
    return session
