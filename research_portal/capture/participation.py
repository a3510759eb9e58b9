"""A participant's way through a study: entry, language, consent, ending and the panel redirects.

Plain functions: `check_*` validate, `do_*` change data. Views stay thin and call these.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from research_portal.capture.models import ParticipantSession, SessionEvent
from research_portal.countries import is_country_code
from research_portal.studies.models import ConsentVersion, CountryQuota, Study
from research_portal.studies.services import ChangeRefused

State = ParticipantSession.State
logger = logging.getLogger(__name__)

PARTICIPANT_ID = re.compile(r"^[\w.\-:@]{1,128}$")
# What `secrets.token_urlsafe` makes (session tokens) and `new_public_id` (study links); anything else in
# those path segments cannot be ours.
URL_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
# Limits on what a participant's request may carry: a panel link is short, and each value is a few words.
MAX_QUERY_LENGTH = 4096
MAX_PARAMETERS = 50
MAX_VALUE_LENGTH = 512
# Control characters (C0, DEL, C1), line/paragraph separators, bidirectional overrides, lone surrogates,
# and U+FFFD, which is what bytes that were not UTF-8 decode to.
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffd]")
# A signed link's time may run ahead of ours by this much (the panel's clock).
CLOCK_SKEW = timedelta(minutes=5)
# Parameter values of the canonical query are percent-encoded with RFC 3986's unreserved characters kept.
UNRESERVED = "-._~"
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
# Every language racing for the next consent version number can lose at most once per other language.
CONSENT_VERSION_ATTEMPTS = 10
# Where each ended state sends the participant back to the panel.
REDIRECT_FIELD_BY_STATE = {
    State.COMPLETED: "redirect_complete_url",
    State.FAILED: "redirect_failed_url",
    State.DECLINED: "redirect_declined_url",
    State.OVER_QUOTA: "redirect_over_quota_url",
}


class EntryRefused(Exception):
    """A request the participant pages refuse, with the page to show: title, detail and, when the panel
    should take the participant back, its redirect."""

    def __init__(self, status: int, title: str, detail: str, next_url: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.next_url = next_url


class QuotaFull(Exception):
    """The country's quota has no seat left; `reason` is the session's exclusion reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def invalid_link() -> EntryRefused:
    return EntryRefused(400, _("This link is not valid"), _("Please check the link you were given."))


def participant_id_missing() -> EntryRefused:
    # The study requires the panel's id (Study.require_participant_id): without it the panel could not be told
    # who finished, so the participant is sent back to open the study from the panel.
    return EntryRefused(
        400,
        _("This link is incomplete"),
        _(
            "The link is missing your participant id. Please go back to your panel and open the study from "
            "there."
        ),
    )


def link_not_signed() -> EntryRefused:
    return EntryRefused(403, _("This link is not valid"), _("Please check the link you were given."))


def link_expired() -> EntryRefused:
    return EntryRefused(
        403, _("This link has expired"), _("Please go back to your panel and open the study again.")
    )


def link_already_used() -> EntryRefused:
    # Says nothing about the session behind it: no token, no state, no redirect.
    return EntryRefused(
        409,
        _("This link was already used"),
        _(
            "Someone has already taken part with this link. If you started the study in another browser "
            "or on another device, please continue there."
        ),
    )


def panel_redirect_url(study: Study, state: str, participant_id: str) -> str:
    """The study's redirect for an ended state with the panel id filled in; "" when none is set. A session
    without a panel id (possible only where the study does not require one, and logged at its entry) gets an
    empty {pid}: the panel cannot tell who it was, which the set-up page counts and warns about."""
    field = REDIRECT_FIELD_BY_STATE.get(state)
    template = getattr(study, field) if field else ""
    return template.replace("{pid}", quote(participant_id, safe="")) if template else ""


def session_redirect_url(session: ParticipantSession) -> str:
    """Where an ended session goes next: the panel's redirect, except that a preview (a study admin trying
    the study) goes back to the study's set-up page and never reaches the panel."""
    if session.is_preview:
        return reverse("studies:setup", args=[session.study_id])
    return panel_redirect_url(session.study, session.state, session.external_participant_id)


# ---- participants' parameters -----------------------------------------------------------------------------


def check_url_token(value: str) -> None:
    """A session token or study id from a path: EntryRefused (400) when it cannot be one of ours."""
    if not URL_TOKEN.match(value):
        raise invalid_link()


def check_clean_text(value: str, max_length: int = MAX_VALUE_LENGTH) -> None:
    if len(value) > max_length or UNSAFE_TEXT.search(value):
        raise invalid_link()


def check_query_string(raw_query: str) -> None:
    """The raw query string: ASCII as browsers send it (they percent-encode the rest), and bounded."""
    if len(raw_query) > MAX_QUERY_LENGTH or not raw_query.isascii() or raw_query.count("&") >= MAX_PARAMETERS:
        raise invalid_link()


def check_parameters(params: QueryDict) -> None:
    """Every name and value a participant's request carries is clean text: EntryRefused (400) otherwise.
    Values that were not UTF-8 arrive as U+FFFD and are refused with the control characters."""
    for name, values in params.lists():
        check_clean_text(name, 64)
        for value in values:
            check_clean_text(value)


def single_parameter(params: QueryDict, name: str) -> str:
    """A parameter given at most once; twice would leave open which one the panel meant."""
    values = params.getlist(name)
    if len(values) > 1:
        raise invalid_link()
    return values[0] if values else ""


@dataclass(frozen=True)
class EntryLink:
    """A study link's parameters, checked: the panel id and country cleaned, every (name, value) as sent."""

    participant_id: str
    country: str
    params: tuple[tuple[str, str], ...]
    signature: str = ""
    timestamp: int | None = None


def country_hint(study: Study, params: QueryDict) -> str:
    """The link's country when it is a country's code (to pick the language of a refusal page), else ""."""
    values = params.getlist(study.country_param)
    country = values[0].strip().upper() if len(values) == 1 else ""
    return country if is_country_code(country) else ""


def read_entry_link(study: Study, params: QueryDict, raw_query: str) -> EntryLink:
    """The study link's parameters under the names this study uses; EntryRefused (400) for anything
    malformed, before anything is looked up."""
    check_query_string(raw_query)
    check_parameters(params)
    participant_id = single_parameter(params, study.participant_id_param).strip()
    country = single_parameter(params, study.country_param).strip().upper()
    # A country must be one ISO 3166-1 assigns (not just any two letters), like every other malformed value.
    if (country and not is_country_code(country)) or (
        participant_id and not PARTICIPANT_ID.match(participant_id)
    ):
        raise invalid_link()
    if not participant_id and study.require_participant_id:
        raise participant_id_missing()
    signature, timestamp = "", None
    if study.signs_links:
        signature = single_parameter(params, study.link_signature_param)
        if signature and not SIGNATURE.match(signature):
            raise invalid_link()
        raw_time = single_parameter(params, study.link_timestamp_param)
        if raw_time and not TIMESTAMP.match(raw_time):
            raise invalid_link()
        timestamp = int(raw_time) if raw_time else None
    pairs = tuple((name, value) for name, values in params.lists() for value in values)
    return EntryLink(participant_id, country, pairs, signature.lower(), timestamp)


# ---- panel link signing -----------------------------------------------------------------------------------


def canonical_query(params: Iterable[tuple[str, str]], signature_param: str) -> str:
    """What a panel signs: every parameter but the signature, name and value percent-encoded as UTF-8
    (RFC 3986: only A-Z a-z 0-9 - . _ ~ stay as they are), sorted, joined as name=value with &."""
    pairs = sorted(
        (quote(name, safe=UNRESERVED), quote(value, safe=UNRESERVED))
        for name, value in params
        if name != signature_param
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def link_signature(secret: str, canonical: str) -> str:
    """HMAC-SHA256 of the canonical query under the study's secret, as 64 lowercase hex digits."""
    return hmac.new(secret.encode("ascii"), canonical.encode("ascii"), hashlib.sha256).hexdigest()


def check_link_signature(study: Study, link: EntryLink, now: datetime | None = None) -> None:
    """A signed study's link must carry the panel's signature of exactly its parameters, panel id included
    (a link signed for one participant is no use for another), and within the study's max age of its
    signed time when it sets one. EntryRefused (403) otherwise."""
    if not link.participant_id or not link.signature:
        raise link_not_signed()
    canonical = canonical_query(link.params, study.link_signature_param)
    expected = link_signature(study.link_signing_secret, canonical)
    if not hmac.compare_digest(expected, link.signature):
        raise link_not_signed()
    if study.link_max_age_minutes:
        if link.timestamp is None:
            raise link_not_signed()
        now = now or timezone.now()
        # (capped: a 12-digit time is far beyond what datetime can hold)
        signed_at = datetime.fromtimestamp(min(link.timestamp, 2**33), tz=UTC)
        if signed_at > now + CLOCK_SKEW or now - signed_at > timedelta(minutes=study.link_max_age_minutes):
            raise link_expired()


# ---- entry ------------------------------------------------------------------------------------------------


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
    """The session a panel participant already has in this study (the first, for ids from before 0006)."""
    if not participant_id:
        return None
    return (
        ParticipantSession.objects.filter(study=study, external_participant_id=participant_id)
        .order_by("pk")
        .first()
    )


def check_may_resume(
    study: Study,
    session: ParticipantSession,
    link: EntryLink,
    bound_session_ids: Collection[int],
    now: datetime | None = None,
) -> None:
    """A returning panel id resumes only in the browser its session was started in (the entry cookie), or
    with a link signed by the panel; otherwise the link was already used (EntryRefused)."""
    if session.pk in bound_session_ids:
        return
    if not study.signs_links:
        raise link_already_used()
    check_link_signature(study, link, now)


def check_entry(study: Study, link: EntryLink, now: datetime | None = None) -> None:
    """A new participant's link: signed when the study signs links, study live, country allowed. The
    quota is decided when the session is made (`do_admit_participant`), under a lock."""
    if study.signs_links:
        check_link_signature(study, link, now)
    if not study.is_accepting_participants:
        raise EntryRefused(
            410,
            _("This study is closed"),
            _("Thank you for your interest; this study is not open right now."),
            panel_redirect_url(study, State.OVER_QUOTA, link.participant_id),
        )
    if study.allowed_countries and link.country not in study.allowed_countries:
        raise EntryRefused(
            403,
            _("This study is not available in your country"),
            _("Thank you for your interest; this study is for participants in other countries."),
            panel_redirect_url(study, State.OVER_QUOTA, link.participant_id),
        )


def quota_full_page(session: ParticipantSession) -> EntryRefused:
    """The page for an entry refused because its country's quota is full."""
    return EntryRefused(
        403,
        _("This study is full"),
        _("Thank you for your interest; we have all the participants we need."),
        session_redirect_url(session),
    )


def validated_completes(study: Study, country: str) -> int:
    """Completed sessions of real participants (an admin's preview sessions never count)."""
    return ParticipantSession.objects.filter(
        study=study, country=country, state=State.COMPLETED, is_preview=False
    ).count()


def seats_taken(
    study: Study, country: str, now: datetime, excluding: ParticipantSession | None = None
) -> int:
    """Validated completes plus the seats that sessions still in progress hold (`quota_seat_minutes` from
    their entry; previews never count)."""
    taken = Q(state=State.COMPLETED)
    if study.quota_seat_minutes:
        held_since = now - timedelta(minutes=study.quota_seat_minutes)
        taken |= Q(state__in=[State.STARTED, State.CONSENTED, State.VIEWING], created_at__gte=held_since)
    sessions = ParticipantSession.objects.filter(taken, study=study, country=country, is_preview=False)
    if excluding is not None:
        sessions = sessions.exclude(pk=excluding.pk)
    return sessions.count()


def check_quota_seat(
    study: Study, country: str, session: ParticipantSession | None = None, now: datetime | None = None
) -> None:
    """QuotaFull when the country's quota has no seat for a new entry (`session` None) or for `session` to
    become a validated complete. Locks the quota row, so call it inside the transaction that then writes:
    entries and validations of one country take turns here and each counts what the previous committed."""
    quota = CountryQuota.objects.select_for_update().filter(study=study, country=country).first()
    if quota is None:
        return
    if seats_taken(study, country, now or timezone.now(), excluding=session) >= quota.target:
        when = "refused at entry" if session is None else "the target was reached before this session"
        raise QuotaFull(f"quota full: {country} {quota.target}, {when}")


@dataclass(frozen=True)
class Entry:
    """What a study link led to: a new or resumed session, or a refusal recorded as an over_quota session
    (`refusal`: the page to show)."""

    session: ParticipantSession
    refusal: EntryRefused | None = None


@transaction.atomic
def do_admit_participant(study: Study, link: EntryLink, language: str, device_type: str) -> Entry:
    """A new participant's session, or, with their country's quota full, an over_quota session that the
    study overview counts. IntegrityError when the panel id got its session meanwhile."""
    try:
        check_quota_seat(study, link.country)
    except QuotaFull as full:
        session = ParticipantSession.objects.create(
            study=study,
            external_participant_id=link.participant_id,
            via_entry_link=True,
            country=link.country,
            language=language,
            device_type=device_type,
            state=State.OVER_QUOTA,
            exclusion_reason=full.reason,
        )
        return Entry(session, refusal=quota_full_page(session))
    session = do_start_session(
        study, link.participant_id, link.country, language, device_type, via_entry_link=True
    )
    return Entry(session)


def do_enter_study(
    study: Study,
    link: EntryLink,
    language: str,
    device_type: str,
    bound_session_ids: Collection[int] = (),
    now: datetime | None = None,
) -> Entry:
    """Follow a checked study link: resume the panel id's session (when allowed), or admit a new
    participant. EntryRefused for a link that may not start or resume anything."""
    for _attempt in range(2):
        returning = find_returning_session(study, link.participant_id)
        if returning is not None:
            check_may_resume(study, returning, link, bound_session_ids, now)
            return Entry(returning)
        check_entry(study, link, now)
        try:
            entry = do_admit_participant(study, link, language, device_type)
        except IntegrityError:
            continue  # the same link opened twice at once: the other request made the session
        if not link.participant_id:
            # Allowed (the study does not require an id), but never silent: the panel cannot tell who this
            # was, the session cannot be resumed, and its redirect's {pid} is empty.
            logger.warning(
                "study %s: session %s entered without a panel id (no %r parameter); its redirects carry an "
                "empty {pid} (the set-up option 'Refuse links without a participant id' refuses such links)",
                study.pk,
                entry.session.pk,
                study.participant_id_param,
            )
        return entry
    raise link_already_used()


@transaction.atomic
def do_start_session(
    study: Study,
    participant_id: str,
    country: str,
    language: str,
    device_type: str = "unknown",
    is_preview: bool = False,
    via_entry_link: bool = False,
) -> ParticipantSession:
    """Start a new session with its own ad order (fixed by position, or shuffled once)."""
    ad_ids = list(study.ads.order_by("position", "id").values_list("id", flat=True))
    if study.ad_order == Study.AdOrder.RANDOM:
        random.SystemRandom().shuffle(ad_ids)
    return ParticipantSession.objects.create(
        study=study,
        external_participant_id=participant_id,
        via_entry_link=via_entry_link,
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
    """The exact text shown in `language`, as a version; a changed text becomes a new version.

    Race-safe: participants consenting at the same moment may each try to make the next version number;
    the unique (study, version) constraint lets one win, and the others read again (inside a savepoint) and
    use the winner's version, or the next number when the winner was another language's text. The
    language's latest version and the newest number come from one query (one snapshot), so a version
    committed in between cannot make a second version of the same text."""
    text = consent_text_for(study, language)
    for _attempt in range(CONSENT_VERSION_ATTEMPTS):
        versions = list(study.consent_versions.order_by("-version").values_list("pk", "version", "language"))
        latest_pk = next((pk for pk, _number, code in versions if code == language), None)
        if latest_pk is not None:
            latest = ConsentVersion.objects.get(pk=latest_pk)
            if latest.text == text:
                return latest
        try:
            with transaction.atomic():  # a savepoint: losing the race must not break the caller's transaction
                return ConsentVersion.objects.create(
                    study=study, version=versions[0][1] + 1 if versions else 1, language=language, text=text
                )
        except IntegrityError:
            continue
    raise RuntimeError(f"no consent version after {CONSENT_VERSION_ATTEMPTS} attempts")


def lock_session(session: ParticipantSession) -> None:
    """Take the session's row lock (inside a transaction) and reload it: two tabs posting at once take turns,
    and the second sees what the first did."""
    ParticipantSession.objects.select_for_update().filter(pk=session.pk).values_list("pk").get()
    session.refresh_from_db()


@transaction.atomic
def do_record_consent(session: ParticipantSession) -> None:
    lock_session(session)
    if session.state == State.STARTED:
        session.consent_version = current_consent_version(session.study, session.language)
        session.state = State.CONSENTED
        session.consent_at = timezone.now()
        session.save(update_fields=["consent_version", "state", "consent_at"])


@transaction.atomic
def do_decline(session: ParticipantSession) -> None:
    lock_session(session)
    if session.state == State.STARTED:
        do_end_session(session, State.DECLINED, "declined consent")


def do_end_session(session: ParticipantSession, state: str, reason: str = "") -> None:
    """Move a session to an ended state (once: an ended session keeps its outcome)."""
    if session.has_ended:
        return
    session.state = state
    session.exclusion_reason = reason[:200]
    if session.viewing_ended_at is None and state in (State.COMPLETED, State.FAILED):
        session.viewing_ended_at = timezone.now()
    session.save(update_fields=["state", "exclusion_reason", "viewing_ended_at"])


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


def do_start_preview(study: Study, language: str, country: str = "") -> ParticipantSession:
    """A participant session for the study's admin to try it: works in any status, skips quotas and never
    counts toward them or the analytics; its end page leads back to the set-up page."""
    if not study.ads.exists():
        raise ChangeRefused("Upload an ad first: the preview plays the study's ads.")
    country = country or (study.allowed_countries[0] if study.allowed_countries else "")
    return do_start_session(
        study, f"preview-{secrets.token_hex(4)}", country, language, "unknown", is_preview=True
    )
