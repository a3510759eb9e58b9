"""Analytics fixtures: analysts of two organisations, and frames stored the way the workers store them
(capture.storage.store_results, which calls the rollup hook)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from research_portal.analytics.definitions import EMOTIONS
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.storage import store_results

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


def new_participant(
    study, country: str, state: str = "viewing", device: str = "desktop", consent_at=T0, **extra
):
    return ParticipantSession.objects.create(
        study=study, country=country, state=state, device_type=device, consent_at=consent_at, **extra
    )


@dataclass
class Analysts:
    acme: object  # analyst of Acme Research (the `acme` fixture's organisation)
    other: object  # admin of another organisation
    admin: object  # superuser


@pytest.fixture
def analysts(acme, django_user_model) -> Analysts:
    """Members are plain users (not staff): access comes from accounts.Membership alone."""
    from research_portal.accounts.models import Membership, Organization, Role

    acme_user = django_user_model.objects.create_user("ana", password="pw-ana-12345")
    Membership.objects.create(user=acme_user, organization=acme.organization, role=Role.ANALYST)
    other_org = Organization.objects.create(name="Rival Insights")
    other_user = django_user_model.objects.create_user("rival", password="pw-rival-12345")
    Membership.objects.create(user=other_user, organization=other_org, role=Role.ADMIN)
    admin = django_user_model.objects.create_superuser("root", password="pw-root-12345")
    return Analysts(acme_user, other_user, admin)


@pytest.fixture
def analyst_browser(chromium_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Debian's chromium via Playwright (no camera needed: analysts only look)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's ORM calls still block as usual.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def inline_refresh(deployment_mode):
    """Session changes re-file rollups inline (embedded mode), not through a Celery worker."""
    deployment_mode.embedded()


@pytest.fixture
def hand_fixture(acme):
    """Three participants, smile values per frame (valence = 2 * smile - 1 except where None):

    P1 (DE, completed): baseline 0.1, 0.3 (-> 0.2) | s0: 0.2, 0.4 and 0.9 at quality 0.1 | s1: 0.6
    P2 (DE, completed): baseline 0.4               | s0: 0.7                              | s1: 0.2, 0.4
    P3 (US, viewing):   baseline: no face found    | s0: 0.3, 0.3 (valence unknown)       | s1: 0.9
    """
    ad = acme.ad
    p1 = new_participant(acme.study, "DE", state="completed")
    p2 = new_participant(acme.study, "DE", state="completed", device="mobile")
    p3 = new_participant(acme.study, "US")
    w1, w2, w3 = FrameWriter(p1), FrameWriter(p2), FrameWriter(p3)
    w1.store(None, 0, [0.1, 0.3])
    w1.store(ad, 0, [0.2, 0.4])
    w1.store(ad, 0, [0.9], quality=0.1)
    w1.store(ad, 1, [0.6])
    w2.store(None, 0, [0.4])
    w2.store(ad, 0, [0.7])
    w2.store(ad, 1, [0.2, 0.4])
    w3.store(None, 0, [None, None])
    w3.store(ad, 0, [0.3, 0.3], valence=None)
    w3.store(ad, 1, [0.9])
    return acme
