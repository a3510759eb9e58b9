"""Participants and their stored readings, built the way capture leaves them: the one FrameResult builder
(`reading`), a writer that numbers a participant's frames and stores them with the workers' own
storage.store_results (which refreshes the rollups), and a whole finished session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from research_portal.analytics.debounce import do_update_rollups
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.readings import READING_LABELS
from research_portal.capture.storage import store_results

MODEL = "test-model-1"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# FER2013's seven labels: a model version without FER+'s contempt.
SEVEN_LABELS: tuple[str, ...] = tuple(label for label in READING_LABELS if label != "contempt")


def reading(
    session: ParticipantSession,
    ad,
    seq: int,
    media_time_ms: int,
    smile: float | None = 0.2,
    *,
    valence: float | None = "auto",
    quality: float | None = 0.9,
    face: bool = True,
    model: str = MODEL,
    labels: Sequence[str] = READING_LABELS,
    start: datetime = T0,
    **emotions: float,
) -> FrameResult:
    """A FrameResult as the worker builds it, not yet saved: smile = happy; the model's other `labels` share
    the rest equally unless given, the labels it lacks stay NULL; valence defaults to 2 * smile - 1; captured
    `media_time_ms` after `start`."""
    row = FrameResult(
        session=session,
        ad=ad,
        seq=seq,
        media_time_ms=media_time_ms,
        captured_at=start + timedelta(milliseconds=media_time_ms),
        face_found=face,
        model_version=model,
    )
    if not face:
        return row
    rest = (1.0 - smile) / (len(labels) - 1)
    for emotion in labels:
        setattr(row, emotion, emotions.get(emotion, rest))
    row.happy = row.smile = smile
    row.valence = 2 * smile - 1 if valence == "auto" else valence
    row.quality = quality
    row.face_x, row.face_y, row.face_w, row.face_h, row.face_score = 100, 60, 120, 120, 0.95
    return row


class FrameWriter:
    """Builds a participant's frames with increasing seq numbers and stores them with store_results."""

    def __init__(self, session: ParticipantSession) -> None:
        self.session = session
        self.seq = 0

    def frames(self, ad, second: int, smiles: list[float | None], **kwargs) -> list[FrameResult]:
        """One reading per smile value (None: no face), 200 ms apart from 100 ms into `second`."""
        rows = []
        for index, smile in enumerate(smiles):
            media_ms = second * 1000 + 100 + index * 200
            if smile is None:
                rows.append(reading(self.session, ad, self.seq, media_ms, face=False, **kwargs))
            else:
                rows.append(reading(self.session, ad, self.seq, media_ms, smile, **kwargs))
            self.seq += 1
        return rows

    def store(self, ad, second: int, smiles: list[float | None], **kwargs) -> list[FrameResult]:
        rows = self.frames(ad, second, smiles, **kwargs)
        store_results(rows)
        return rows


def new_participant(
    study, country: str, state: str = "viewing", device: str = "desktop", consent_at=T0, **extra
) -> ParticipantSession:
    return ParticipantSession.objects.create(
        study=study, country=country, state=state, device_type=device, consent_at=consent_at, **extra
    )


def new_viewer(study, panel_id: str, playlist: Sequence | None = None) -> ParticipantSession:
    """A participant of `study` (DE) who passed the camera check just now, to watch `playlist` (default: the
    study's first ad); opening the frame socket makes the session `viewing`."""
    ads = list(playlist) if playlist is not None else [study.ads.order_by("pk").first()]
    return ParticipantSession.objects.create(
        study=study,
        country="DE",
        external_participant_id=panel_id,
        state=ParticipantSession.State.CONSENTED,
        checks_passed_at=timezone.now(),
        ad_sequence=[ad.pk for ad in ads],
    )


def session_with_frames(
    study, panel_id: str, ad, frames: int = 10, country: str = "DE", completed: bool = True, **extra
) -> ParticipantSession:
    """A participant session with `frames` stored readings of a seven-label model (and their rollups) and
    one page event, as capture would leave it."""
    session = ParticipantSession.objects.create(
        study=study,
        external_participant_id=panel_id,
        country=country,
        state=ParticipantSession.State.COMPLETED if completed else ParticipantSession.State.VIEWING,
        ad_sequence=[ad.pk],
        **extra,
    )
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    rows = [
        reading(
            session,
            ad,
            seq,
            seq * 200,
            0.7,
            valence=0.5,
            model="test-model",
            labels=SEVEN_LABELS,
            start=start,
            angry=0.0,
            disgust=0.0,
            fear=0.0,
            sad=0.0,
            surprise=0.1,
            neutral=0.2,
        )
        for seq in range(frames)
    ]
    FrameResult.objects.bulk_create(rows)
    do_update_rollups(rows)
    SessionEvent.objects.create(session=session, name=SessionEvent.Name.TAB_HIDDEN, ad=ad, media_time_ms=400)
    return session
