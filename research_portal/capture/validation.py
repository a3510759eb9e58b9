"""Ending a viewing: wait for the last readings, then decide whether the session is a validated complete;
or end it early when the participant's browser cannot play one of its ads.

Validation is periodic work (do_validate_due_sessions: Celery beat in production, the in-process loop of
research_portal/ops/periodic.py in embedded mode), never a side effect of a page: a session is validated
whether or not its end page is still open, and the end page's poll only reads the outcome.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import numpy as np
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.participation import QuotaFull, check_quota_seat, do_end_session, do_record_event
from research_portal.studies.models import Ad

logger = logging.getLogger(__name__)

State = ParticipantSession.State

# The last batch is acked when queued; its readings land a moment later. Wait this long after it...
STORE_GRACE = timedelta(seconds=2)
# ...but never longer than this after viewing ended, so a lost batch cannot hold a participant forever.
# With validation every SESSION_VALIDATION_INTERVAL_S (5 s) a finished session is validated within 35 s.
MAX_VALIDATION_WAIT = timedelta(seconds=30)
# A session past its camera check whose viewing never ended (tab closed mid-ad, browser gone) and that has
# sent no frame for this long is abandoned: it ends Failed, so no session stays `viewing` for ever. As long
# as a study's quota seat lasts by default (quota_seat_minutes, 30): a participant away for longer had lost
# their seat already. The ad pauses while the tab is hidden, so a participant who comes back within it
# carries on.
ABANDONED_AFTER = timedelta(minutes=30)
ABANDONED = "abandoned"  # the exclusion reason's category
# Sessions validated per run at most (oldest first); the next run takes the rest.
VALIDATIONS_PER_RUN = 500
# A run of frames without a face at least this long is recorded as a face_lost event.
FACE_LOST_EVENT_MS = 3000
# The exclusion reason (its category, before the colon) of a session whose browser could not play an ad.
AD_UNPLAYABLE = SessionEvent.Name.AD_UNPLAYABLE.value


class ReportRefused(Exception):
    """A report from the participant's page that does not hold for its session; `code` goes to the client."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def do_finish_viewing(session: ParticipantSession) -> None:
    """The browser played every ad; the socket stops taking frames and validation can begin."""
    if session.is_capturing and session.checks_passed_at is not None:
        session.viewing_ended_at = timezone.now()
        session.save(update_fields=["viewing_ended_at"])


def is_ready_to_validate(session: ParticipantSession, now: datetime | None = None) -> bool:
    """Whether a session whose viewing ended can be validated now: the reading of its last queued frame is
    stored (and STORE_GRACE has passed for its batch-mates), or MAX_VALIDATION_WAIT has passed."""
    now = now or timezone.now()
    if session.has_ended or session.viewing_ended_at is None:
        return False
    if now - session.viewing_ended_at >= MAX_VALIDATION_WAIT or session.last_enqueued_seq is None:
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
            detail = f"{lost_ms / 1000:.1f} s without a face"
            do_record_event(session.pk, SessionEvent.Name.FACE_LOST, ad.pk, detail=detail)
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


def last_sign_of_life() -> Coalesce:
    """When a session last showed it was there: its newest queued frame, else its camera check."""
    return Coalesce("last_enqueued_at", "checks_passed_at")


def sessions_due_for_validation(now: datetime) -> QuerySet[ParticipantSession]:
    """Sessions not yet ended whose viewing ended (validated once their readings are in: is_ready_to_validate)
    or that are abandoned (ABANDONED_AFTER), oldest first."""
    abandoned = Q(
        viewing_ended_at__isnull=True, checks_passed_at__isnull=False, last_seen__lt=now - ABANDONED_AFTER
    )
    return (
        ParticipantSession.objects.filter(state__in=ParticipantSession.CAPTURING_STATES)
        .alias(last_seen=last_sign_of_life())
        .filter(Q(viewing_ended_at__isnull=False) | abandoned)
        .order_by(Coalesce("viewing_ended_at", "last_seen"), "pk")
    )


@transaction.atomic
def do_end_abandoned_session(session: ParticipantSession, now: datetime | None = None) -> None:
    """Failed (`abandoned`) unless, under its row lock, the session turns out to be ended, to have finished
    viewing, or to have sent a frame within ABANDONED_AFTER meanwhile."""
    now = now or timezone.now()
    session = ParticipantSession.objects.select_for_update().get(pk=session.pk)
    last_seen = session.last_enqueued_at or session.checks_passed_at
    if session.has_ended or session.viewing_ended_at is not None or last_seen is None:
        return
    if now - last_seen < ABANDONED_AFTER:
        return
    minutes = int(ABANDONED_AFTER.total_seconds() // 60)
    do_end_session(session, State.FAILED, f"{ABANDONED}: viewing never ended, no frame for {minutes} minutes")


def do_validate_due_sessions(now: datetime | None = None) -> int:
    """The periodic validation: validate every session whose viewing ended and whose readings are in, and end
    the abandoned ones. Each session in its own transaction, under its row lock, so runs that overlap (or a
    session ended meanwhile) change nothing twice. Returns how many sessions it validated or ended.

    A session that fails to validate (a bug, bad data) is logged and left for the next run without holding
    up the others; the database away stops the run (the next one starts over)."""
    now = now or timezone.now()
    done = 0
    for session in sessions_due_for_validation(now)[:VALIDATIONS_PER_RUN]:
        try:
            if session.viewing_ended_at is None:
                do_end_abandoned_session(session, now)
            elif is_ready_to_validate(session, now):
                do_validate_session(session)
            else:
                continue
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception(
                "session could not be validated; trying again next run", extra={"session_id": session.pk}
            )
            continue
        done += 1
    return done


# ---- an ad the participant's browser cannot play -----------------------------------------------------------


def newest_frame_ad_id(session: ParticipantSession, taken: tuple[int, int] | None = None) -> int | None:
    """The ad id (0: the baseline screen) of the session's newest frame: the newest stored, or `taken`
    ((seq, ad id) of the newest frame its socket took, maybe not stored yet), whichever has the higher seq.
    None before any frame."""
    stored = FrameResult.objects.filter(session=session).order_by("-seq").values_list("seq", "ad_id").first()
    frames = [(frame[0], frame[1] or 0) for frame in (stored, taken) if frame is not None]  # (baseline: NULL)
    return max(frames)[1] if frames else None


def current_ad_ids(session: ParticipantSession, newest_ad_id: int | None) -> list[int]:
    """The ads the participant may be at now: the ad of the session's newest frame, or the next one in its
    order (an ad that fails as it loads sends no frame); before any ad frame, the first ad."""
    sequence = session.ad_sequence
    if newest_ad_id in sequence:
        position = sequence.index(newest_ad_id)
        return sequence[position : position + 2]
    return sequence[:1]


def check_unplayable_ad(session: ParticipantSession, ad_id: int, taken: tuple[int, int] | None = None) -> Ad:
    """The ad a report says cannot be played, when the report holds: the session is viewing (not ended, its
    viewing not finished: a repeated report finds it ended) and the ad is its own current one. ReportRefused
    (`not_viewing`, `wrong_ad`) otherwise."""
    if session.state != State.VIEWING or session.viewing_ended_at is not None:
        status = "done viewing" if session.state == State.VIEWING else session.state
        raise ReportRefused("not_viewing", f"This session is {status}; it is not viewing an ad.")
    ad = Ad.objects.filter(study_id=session.study_id, pk=ad_id).first()
    if ad is None or ad_id not in current_ad_ids(session, newest_frame_ad_id(session, taken)):
        raise ReportRefused("wrong_ad", f"Ad {ad_id} is not the ad this session is at.")
    return ad


@transaction.atomic
def do_fail_unplayable_ad(
    session_id: int,
    ad_id: int,
    error: str,
    media_time_ms: int | None = None,
    taken: tuple[int, int] | None = None,
) -> ParticipantSession:
    """The participant's browser cannot play the session's current ad (`error`: why): record it and end the
    session Failed (`ad_unplayable`, naming the ad), so the page can send the participant back to the panel
    with the Failed redirect. Under the session's row lock, so a repeated report finds it ended
    (ReportRefused, as for any report that does not hold: check_unplayable_ad)."""
    session = ParticipantSession.objects.select_for_update().get(pk=session_id)  # (not its study's row)
    ad = check_unplayable_ad(session, ad_id, taken)
    do_record_event(session.pk, SessionEvent.Name.AD_UNPLAYABLE, ad.pk, media_time_ms, detail=error)
    do_end_session(session, State.FAILED, f"{AD_UNPLAYABLE}: ad {ad.pk} ({error}): {ad.title}")
    return session


def failed_for_unplayable_ad(session: ParticipantSession) -> bool:
    """Whether the session ended because the participant's browser could not play an ad
    (do_fail_unplayable_ad): its end page says so."""
    return session.state == State.FAILED and session.exclusion_reason.startswith(f"{AD_UNPLAYABLE}:")
