"""Organisations, members and frame data for the accounts, set-up, privacy and security tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model

from research_portal.accounts.models import Membership, Organization, Role
from research_portal.analytics.rollups import do_update_rollups
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent

PASSWORD = "a-long-test-password-7421"


def member(organization: Organization, role: str = Role.ANALYST, username: str | None = None):
    username = username or f"{role}-{organization.pk}-{Membership.objects.count()}"
    user = get_user_model().objects.create_user(
        username=username, password=PASSWORD, email=f"{username}@x.test"
    )
    Membership.objects.create(user=user, organization=organization, role=role)
    return user


def session_with_frames(
    study, panel_id: str, ad, frames: int = 10, country: str = "DE", completed: bool = True, **extra
) -> ParticipantSession:
    """A participant session with stored readings (and its analytics rollups), as capture would leave it."""
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
        FrameResult(
            session=session,
            ad=ad,
            seq=seq,
            media_time_ms=seq * 200,
            captured_at=start + timedelta(milliseconds=seq * 200),
            face_found=True,
            face_x=10,
            face_y=10,
            face_w=100,
            face_h=100,
            face_score=0.9,
            angry=0.0,
            disgust=0.0,
            fear=0.0,
            happy=0.7,
            sad=0.0,
            surprise=0.1,
            neutral=0.2,
            smile=0.7,
            valence=0.5,
            quality=0.9,
            model_version="test-model",
        )
        for seq in range(frames)
    ]
    FrameResult.objects.bulk_create(rows)
    do_update_rollups(rows)
    SessionEvent.objects.create(session=session, name=SessionEvent.Name.TAB_HIDDEN, ad=ad, media_time_ms=400)
    return session
