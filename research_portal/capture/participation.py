"""A participant's way through a study: entry, consent, viewing, completion (plain functions)."""

from __future__ import annotations

import re

from django.db import transaction
from django.utils import timezone

from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import Study

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
PARTICIPANT_ID = re.compile(r"^[\w.\-:@]{1,128}$")


class EntryRefused(Exception):
    """A study link that cannot start a session; `status` is the HTTP status of the page shown."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def check_entry(study: Study, participant_id: str, country: str) -> tuple[str, str]:
    """Validate the panel's query parameters; returns the cleaned (participant_id, country)."""
    if not study.is_accepting_participants:
        raise EntryRefused(
            410, "This study is not running", "The study is not open for participants right now."
        )
    country = country.strip().upper()
    if country and not COUNTRY_CODE.match(country):
        raise EntryRefused(400, "Invalid link", "The country in this link is not a two-letter country code.")
    if study.allowed_countries and country not in study.allowed_countries:
        raise EntryRefused(403, "Not available in your country", "This study is not open in your country.")
    participant_id = participant_id.strip()
    if participant_id and not PARTICIPANT_ID.match(participant_id):
        raise EntryRefused(400, "Invalid link", "The participant id in this link is not valid.")
    return participant_id, country


@transaction.atomic
def do_start_session(study: Study, participant_id: str, country: str) -> ParticipantSession:
    """Start a session, or resume the unfinished one of the same panel participant."""
    if participant_id:
        existing = (
            ParticipantSession.objects.select_for_update()
            .filter(study=study, external_participant_id=participant_id)
            .exclude(state__in=[ParticipantSession.State.COMPLETED, ParticipantSession.State.DECLINED])
            .first()
        )
        if existing is not None:
            return existing
    return ParticipantSession.objects.create(
        study=study, external_participant_id=participant_id, country=country
    )


def do_record_consent(session: ParticipantSession) -> None:
    if session.state == ParticipantSession.State.STARTED:
        session.state = ParticipantSession.State.CONSENTED
        session.consent_at = timezone.now()
        session.save(update_fields=["state", "consent_at"])


def do_decline(session: ParticipantSession) -> None:
    if session.state == ParticipantSession.State.STARTED:
        session.state = ParticipantSession.State.DECLINED
        session.save(update_fields=["state"])


def do_complete_session(session: ParticipantSession) -> None:
    if session.is_capturing:
        session.state = ParticipantSession.State.COMPLETED
        session.completed_at = timezone.now()
        session.save(update_fields=["state", "completed_at"])
