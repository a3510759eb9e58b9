"""A participant's way through a study: entry, language, consent, ending and the panel redirects.

Plain functions: `check_*` validate, `do_*` change data. Views stay thin and call these.
"""

from __future__ import annotations

import random
import re
from urllib.parse import quote

from django.db import transaction
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from research_portal.capture.models import ParticipantSession, SessionEvent
from research_portal.studies.models import ConsentVersion, CountryQuota, Study

State = ParticipantSession.State

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
PARTICIPANT_ID = re.compile(r"^[\w.\-:@]{1,128}$")
PARTICIPANT_LANGUAGES = ("en", "de", "fr", "es", "pt", "ja")
# Countries whose participants get a page language other than English, when we have it.
LANGUAGE_BY_COUNTRY = {
    **dict.fromkeys(["DE", "AT", "CH", "LI"], "de"),
    **dict.fromkeys(["FR", "BE", "LU", "MC"], "fr"),
    **dict.fromkeys(
        [
            "ES",
            "MX",
            "AR",
            "CO",
            "CL",
            "PE",
            "VE",
            "EC",
            "GT",
            "CU",
            "BO",
            "DO",
            "HN",
            "PY",
            "SV",
            "NI",
            "CR",
            "PA",
            "UY",
        ],
        "es",
    ),
    **dict.fromkeys(["BR", "PT", "AO", "MZ"], "pt"),
    "JP": "ja",
}
# Where each ended state sends the participant back to the panel.
REDIRECT_FIELD_BY_STATE = {
    State.COMPLETED: "redirect_complete_url",
    State.FAILED: "redirect_failed_url",
    State.DECLINED: "redirect_declined_url",
    State.OVER_QUOTA: "redirect_over_quota_url",
}


class EntryRefused(Exception):
    """A study link that cannot start a session. `outcome` picks the panel redirect, if any applies."""

    def __init__(self, status: int, title: str, detail: str, outcome: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.outcome = outcome


def panel_redirect_url(study: Study, state: str, participant_id: str) -> str:
    """The study's redirect for an ended state with the panel id filled in; "" when none is set."""
    field = REDIRECT_FIELD_BY_STATE.get(state)
    template = getattr(study, field) if field else ""
    return template.replace("{pid}", quote(participant_id, safe="")) if template else ""


def session_redirect_url(session: ParticipantSession) -> str:
    """Where an ended session goes next: the panel's redirect, except that a preview (a study admin trying
    the study) goes back to the study's set-up page and never reaches the panel."""
    if session.is_preview:
        return reverse("studies:setup", args=[session.study_id])
    return panel_redirect_url(session.study, session.state, session.external_participant_id)


def read_entry_params(study: Study, query) -> tuple[str, str]:
    """The panel's participant id and country, under the parameter names this study uses."""
    return query.get(study.participant_id_param, ""), query.get(study.country_param, "")


def language_for(country: str, browser_language: str) -> str:
    """The country's language if we have it, else the browser's if we have it, else English."""
    for candidate in (LANGUAGE_BY_COUNTRY.get(country, ""), browser_language.split("-")[0].lower()):
        if candidate in PARTICIPANT_LANGUAGES:
            return candidate
    return "en"


def device_type_from_user_agent(user_agent: str) -> str:
    """A coarse device class for analysis filters; tablets first, since iPads and Android tablets say 'Mobile'
    rarely and 'Tablet'/'iPad' often."""
    agent = user_agent.lower()
    if "ipad" in agent or "tablet" in agent or ("android" in agent and "mobile" not in agent):
        return ParticipantSession.DeviceType.TABLET
    if "mobi" in agent or "iphone" in agent:
        return ParticipantSession.DeviceType.MOBILE
    if any(system in agent for system in ("windows", "macintosh", "x11", "linux", "cros")):
        return ParticipantSession.DeviceType.DESKTOP
    return ParticipantSession.DeviceType.UNKNOWN


def find_returning_session(study: Study, participant_id: str) -> ParticipantSession | None:
    """The session a panel participant already has in this study: coming back resumes it."""
    if not participant_id:
        return None
    return ParticipantSession.objects.filter(study=study, external_participant_id=participant_id).first()


def check_entry(study: Study, participant_id: str, country: str) -> tuple[str, str]:
    """Validate a new participant's link; returns the cleaned (participant_id, country)."""
    participant_id = participant_id.strip()
    country = country.strip().upper()
    if (country and not COUNTRY_CODE.match(country)) or (
        participant_id and not PARTICIPANT_ID.match(participant_id)
    ):
        raise EntryRefused(400, _("This link is not valid"), _("Please check the link you were given."))
    if not study.is_accepting_participants:
        raise EntryRefused(
            410,
            _("This study is closed"),
            _("Thank you for your interest; this study is not open right now."),
            State.OVER_QUOTA,
        )
    if study.allowed_countries and country not in study.allowed_countries:
        raise EntryRefused(
            403,
            _("This study is not available in your country"),
            _("Thank you for your interest; this study is for participants in other countries."),
            State.OVER_QUOTA,
        )
    if check_quota_full(study, country):
        raise EntryRefused(
            403,
            _("This study is full"),
            _("Thank you for your interest; we have all the participants we need."),
            State.OVER_QUOTA,
        )
    return participant_id, country


def check_quota_full(study: Study, country: str) -> bool:
    """True when the country's quota of validated completes is reached (no quota: never full)."""
    quota = CountryQuota.objects.filter(study=study, country=country).first()
    if quota is None:
        return False
    return validated_completes(study, country) >= quota.target


def validated_completes(study: Study, country: str) -> int:
    """Completed sessions of real participants (an admin's preview sessions never count)."""
    return ParticipantSession.objects.filter(
        study=study, country=country, state=State.COMPLETED, is_preview=False
    ).count()


@transaction.atomic
def do_start_session(
    study: Study,
    participant_id: str,
    country: str,
    language: str,
    device_type: str = "unknown",
    is_preview: bool = False,
) -> ParticipantSession:
    """Start a new session with its own ad order (fixed by position, or shuffled once)."""
    ad_ids = list(study.ads.order_by("position", "id").values_list("id", flat=True))
    if study.ad_order == Study.AdOrder.RANDOM:
        random.SystemRandom().shuffle(ad_ids)
    return ParticipantSession.objects.create(
        study=study,
        external_participant_id=participant_id,
        country=country,
        language=language,
        device_type=device_type,
        ad_sequence=ad_ids,
        is_preview=is_preview,
    )


def standard_consent_text() -> str:
    """The portal's own consent text, in the active language; used when a study sets none."""
    return _(
        "We will ask for your webcam while you watch one or more short videos. Your webcam pictures are "
        "analysed by our software to read facial expressions, second by second, and are then discarded: "
        "no picture or video of you is stored. We store only the readings (for example, how much you "
        "smiled each second), linked to your panel participant id. Taking part is voluntary; you can stop "
        "at any time by closing this window."
    )


def consent_text_for(study: Study, language: str) -> str:
    """What a participant reading `language` is asked to agree to."""
    with translation.override(language):
        return study.consent_translations.get(language) or study.consent_text or standard_consent_text()


def current_consent_version(study: Study, language: str) -> ConsentVersion:
    """The exact text shown in `language`, as a version; a changed text becomes a new version."""
    text = consent_text_for(study, language)
    latest = study.consent_versions.filter(language=language).first()
    if latest is not None and latest.text == text:
        return latest
    newest = study.consent_versions.first()
    return ConsentVersion.objects.create(
        study=study, version=(newest.version + 1) if newest else 1, language=language, text=text
    )


@transaction.atomic
def do_record_consent(session: ParticipantSession) -> None:
    if session.state == State.STARTED:
        session.consent_version = current_consent_version(session.study, session.language)
        session.state = State.CONSENTED
        session.consent_at = timezone.now()
        session.save(update_fields=["consent_version", "state", "consent_at"])


def do_decline(session: ParticipantSession) -> None:
    if session.state == State.STARTED:
        do_end_session(session, State.DECLINED, "declined consent")


def do_end_session(session: ParticipantSession, state: str, reason: str = "") -> None:
    """Move a session to an ended state (once: an ended session keeps its outcome)."""
    if session.has_ended:
        return
    session.state = state
    session.exclusion_reason = reason[:200]
    if session.completed_at is None and state in (State.COMPLETED, State.FAILED):
        session.completed_at = timezone.now()
    session.save(update_fields=["state", "exclusion_reason", "completed_at"])


def do_record_event(
    session_id: int, name: str, ad_id: int | None = None, media_time_ms: int | None = None, detail: str = ""
) -> SessionEvent:
    return SessionEvent.objects.create(
        session_id=session_id,
        name=name,
        ad_id=ad_id or None,
        media_time_ms=media_time_ms,
        detail=detail[:200],
    )
