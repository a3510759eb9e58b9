"""The participant session behind a capture socket: looked up once when the socket opens (open_capture), with
the connect limits checked first, and the channel-layer group its sockets share."""

from __future__ import annotations

from types import SimpleNamespace

from django.conf import settings

from research_portal.accounts.ratelimit import client_ip
from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import URL_TOKEN
from research_portal.capture.socket_limits import check_connect_rate
from research_portal.capture.wire import BASELINE_AD_ID, MAX_WIRE_INT, CaptureContext, CaptureRefused


def open_capture(token: str, client_address: str = "") -> CaptureContext:
    """Look up the session behind a socket token and mark it as viewing; refuse unknown or ended ones, and
    connects beyond the limits per token and per client address (check_connect_rate)."""
    check_connect_rate(token, client_address)
    # A token of a form we never issue (NUL, which no query may carry, or any other text) has no session.
    session = None
    if URL_TOKEN.match(token):
        session = ParticipantSession.objects.select_related("study").filter(token=token).first()
    if session is None:
        raise CaptureRefused(4001, "unknown_session", "No participant session has this token.")
    if not session.is_capturing:
        raise CaptureRefused(4003, "session_closed", f"This session is {session.state}; it takes no frames.")
    if session.checks_passed_at is None:
        raise CaptureRefused(4003, "check_required", "The camera and face check comes before viewing.")
    next_seq = 0 if session.last_enqueued_seq is None else session.last_enqueued_seq + 1
    if next_seq > MAX_WIRE_INT:
        # Never hand out a next_seq the socket would refuse (unreachable within SEQ_RATE_FACTOR's bound).
        raise CaptureRefused(4003, "seq_exhausted", "This session has numbered all the frames it can.")
    if session.state == ParticipantSession.State.CONSENTED:
        ParticipantSession.objects.filter(pk=session.pk, state=session.state).update(
            state=ParticipantSession.State.VIEWING
        )
        session.state = ParticipantSession.State.VIEWING
    durations = dict(session.study.ads.values_list("id", "duration_ms"))
    if session.study.baseline_seconds:
        durations[BASELINE_AD_ID] = session.study.baseline_seconds * 1000
    return CaptureContext(
        session_id=session.pk,
        session_state=session.state,
        ad_durations_ms=durations,
        fps=session.study.capture_fps,
        max_frame_bytes=settings.CAPTURE_MAX_FRAME_BYTES,
        next_seq=next_seq,
        store_frames=session.study.store_frames,
        checks_passed_ms=session.checks_passed_at.timestamp() * 1000,
    )


def socket_client_address(scope: dict) -> str:
    """The client's address for a socket's ASGI scope, by the same rule as HTTP requests' (behind
    PORTAL_TRUSTED_PROXY_HOPS proxies, from X-Forwarded-For); "" when the server gives none."""
    headers = dict(scope.get("headers") or ())
    meta = {
        "REMOTE_ADDR": (scope.get("client") or ("",))[0] or "",
        "HTTP_X_FORWARDED_FOR": headers.get(b"x-forwarded-for", b"").decode("latin-1"),
    }
    return client_ip(SimpleNamespace(META=meta))


def session_group(session_id: int) -> str:
    """The channel-layer group of a session's capture socket(s): second-tab takeovers go here."""
    return f"capture.session.{session_id}"
