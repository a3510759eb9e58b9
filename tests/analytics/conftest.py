"""Analytics fixtures: analysts of two organisations, and frames stored the way the workers store them
(capture.services.store_results, which calls the rollup hook)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from research_portal.analytics.definitions import EMOTIONS
from research_portal.analytics.models import OrganizationAnalyst
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.services import store_results

MODEL = "test-model-1"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


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
    **emotions: float,
) -> FrameResult:
    """A FrameResult as the worker builds it: smile = happy; the other emotions share the rest equally unless
    given; valence defaults to 2 * smile - 1."""
    row = FrameResult(
        session=session,
        ad=ad,
        seq=seq,
        media_time_ms=media_time_ms,
        captured_at=T0 + timedelta(milliseconds=media_time_ms),
        face_found=face,
        model_version=model,
    )
    if not face:
        return row
    rest = (1.0 - smile) / (len(EMOTIONS) - 1)
    for emotion in EMOTIONS:
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


def new_participant(study, country: str, state: str = "viewing", device: str = "desktop", **extra):
    return ParticipantSession.objects.create(
        study=study, country=country, state=state, device_type=device, consent_at=T0, **extra
    )


@dataclass
class Analysts:
    acme: object  # analyst of Acme Research (the `acme` fixture's organisation)
    other: object  # analyst of another organisation
    admin: object  # superuser


@pytest.fixture
def analysts(acme, django_user_model) -> Analysts:
    from research_portal.accounts.models import Organization

    acme_user = django_user_model.objects.create_user("ana", password="pw-ana-12345", is_staff=True)
    OrganizationAnalyst.objects.create(user=acme_user, organization=acme.organization)
    other_org = Organization.objects.create(name="Rival Insights")
    other_user = django_user_model.objects.create_user("rival", password="pw-rival-12345", is_staff=True)
    OrganizationAnalyst.objects.create(user=other_user, organization=other_org)
    admin = django_user_model.objects.create_superuser("root", password="pw-root-12345")
    return Analysts(acme_user, other_user, admin)


@pytest.fixture
def inline_refresh(settings):
    """Session changes re-file rollups inline (embedded mode), not through a Celery worker."""
    settings.CAPTURE_ANALYSIS_BACKEND = "thread"
