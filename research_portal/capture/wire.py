"""What travels on the frame path: the capture socket's messages, parsed and bounded here before anything
else sees them, and the queued frame they become (docs/architecture.md, "Wire protocol").

parse_frame() reads one binary message (the header and the JPEG) against the socket's CaptureContext; the
socket turns the Frame into a QueuedFrame, which the batcher, the queue and the analysis stage carry to the
database. Text messages (`finish`, `event`, `ad_unplayable`) are bounded in size and nesting before they
are parsed. Every refusal is a FrameRejected with the code the client gets.
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from research_portal.capture.models import SessionEvent
from research_portal.media import JPEG_MAGIC

# Ad id 0 on the wire: the neutral baseline screen before the first ad (stored with ad NULL).
BASELINE_AD_ID = 0
# seq, ad_id, media_time_ms (uint32 each), capture_time_ms (float64 epoch ms), network byte order.
FRAME_HEADER = struct.Struct("!IIId")
# A frame may carry a media time a little past the ad's probed duration (rounding, last frame).
MEDIA_TIME_SLACK_MS = 2_000
# Resent frames after a long network drop are old but real; a day is beyond any viewing session.
MAX_CAPTURE_AGE_MS = 24 * 3600 * 1000
MAX_CAPTURE_CLOCK_SKEW_MS = 10 * 60 * 1000
# Every integer of the header lands in a PositiveIntegerField, a 4-byte signed integer in Postgres.
MAX_WIRE_INT = 2**31 - 1
# A session's frames are numbered from 0, at most at the study's rate, and only after the camera check
# (capture.js numbers every frame it grabs, a reloaded page continues from `next_seq`). A seq beyond twice
# that rate since the check, plus this headroom, was never grabbed: refused (`bad_seq`), so nobody can push
# the session's numbering to the column's end. The headroom also holds above the `next_seq` the socket
# handed out, so a client may always go on from there.
SEQ_RATE_FACTOR = 2
SEQ_HEADROOM = 1000

# Text messages are small flat JSON objects (`finish`, `event`): anything longer or deeper is refused before
# it is parsed (deep nesting made json.loads raise RecursionError).
MAX_TEXT_CHARS = 1024
MAX_TEXT_NESTING = 2


class FrameRejected(Exception):
    """A message the socket will not accept; `code` goes to the client verbatim."""

    def __init__(self, code: str, detail: str, seq: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.seq = seq


class CaptureRefused(Exception):
    """The socket cannot capture for this token; the consumer closes with `close_code`."""

    def __init__(self, close_code: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.close_code = close_code
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class CaptureContext:
    """What the socket needs to know about its session, loaded once when it connects (socket_session.py)."""

    session_id: int
    session_state: str
    ad_durations_ms: dict[int, int]  # includes BASELINE_AD_ID when the study shows a baseline
    fps: int
    max_frame_bytes: int
    next_seq: int  # a reloaded page continues numbering here, so its frames never collide with stored ones
    store_frames: bool
    checks_passed_ms: float  # epoch ms of the camera check: no frame was grabbed before it

    def max_seq(self, now_ms: float) -> int:
        """The highest seq a frame may carry now (see SEQ_RATE_FACTOR); never below `next_seq` + headroom,
        never beyond what the column holds."""
        grabbed = SEQ_RATE_FACTOR * self.fps * max(0.0, now_ms - self.checks_passed_ms) / 1000
        return min(MAX_WIRE_INT, max(int(grabbed), self.next_seq) + SEQ_HEADROOM)


class QueuedFrame(NamedTuple):
    """A frame of a session on its way to the database: what the batcher collects, a batch carries to the
    analysis backend and the analysis stage reads. `resend`: its socket saw this seq (or a later one) before,
    so it may be stored already (storage.stored_frame_keys).

    A named tuple: msgpack carries it as it is (an array, batch_store.py), and making one per frame costs the
    socket's event loop a third of what a frozen dataclass does."""

    session_id: int
    seq: int
    ad_id: int
    media_time_ms: int
    capture_time_ms: float
    jpeg: bytes
    store_frames: bool = False
    resend: bool = False


@dataclass(frozen=True)
class Frame:
    """One binary socket message, parsed (parse_frame)."""

    seq: int
    ad_id: int
    media_time_ms: int
    capture_time_ms: float
    jpeg: bytes

    def queued(self, session_id: int, store_frames: bool = False, resend: bool = False) -> QueuedFrame:
        return QueuedFrame(
            session_id=session_id,
            seq=self.seq,
            ad_id=self.ad_id,
            media_time_ms=self.media_time_ms,
            capture_time_ms=self.capture_time_ms,
            jpeg=self.jpeg,
            store_frames=store_frames,
            resend=resend,
        )


def parse_frame(message: bytes, context: CaptureContext, now_ms: float | None = None) -> Frame:
    """Parse and validate one binary socket message; raise FrameRejected with a client-facing code."""
    if len(message) < FRAME_HEADER.size:
        raise FrameRejected("bad_header", f"A frame needs a {FRAME_HEADER.size}-byte header.")
    seq, ad_id, media_time_ms, capture_time_ms = FRAME_HEADER.unpack_from(message)
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    max_seq = context.max_seq(now_ms)
    if seq > max_seq:
        raise FrameRejected(
            "bad_seq", f"Frame number {seq} is beyond what this session can have reached ({max_seq}).", seq
        )
    jpeg = message[FRAME_HEADER.size :]
    if len(jpeg) > context.max_frame_bytes:
        raise FrameRejected(
            "too_large", f"Frame is {len(jpeg)} bytes; the limit is {context.max_frame_bytes}.", seq
        )
    if not jpeg.startswith(JPEG_MAGIC):
        raise FrameRejected("not_jpeg", "The frame body is not a JPEG image.", seq)
    if ad_id not in context.ad_durations_ms:
        raise FrameRejected("unknown_ad", f"Ad {ad_id} is not part of this study.", seq)
    duration_ms = context.ad_durations_ms[ad_id]
    if media_time_ms > MAX_WIRE_INT or (duration_ms and media_time_ms > duration_ms + MEDIA_TIME_SLACK_MS):
        raise FrameRejected(
            "bad_time", f"Media time {media_time_ms} ms is past the ad's end ({duration_ms} ms).", seq
        )
    if not math.isfinite(capture_time_ms) or not (
        now_ms - MAX_CAPTURE_AGE_MS <= capture_time_ms <= now_ms + MAX_CAPTURE_CLOCK_SKEW_MS
    ):
        raise FrameRejected("bad_time", f"Capture time {capture_time_ms!r} is not a plausible time.", seq)
    return Frame(seq, ad_id, media_time_ms, capture_time_ms, jpeg)


@dataclass(frozen=True)
class PageEvent:
    name: str
    ad_id: int | None
    media_time_ms: int | None


# Page events the browser reports during viewing (stored as SessionEvent).
BROWSER_EVENTS = frozenset(
    {
        SessionEvent.Name.TAB_HIDDEN,
        SessionEvent.Name.TAB_VISIBLE,
        SessionEvent.Name.CAMERA_STOPPED,
        SessionEvent.Name.CAMERA_RESUMED,
    }
)
BAD_MESSAGE_DETAIL = 'Text messages must be JSON like {"type": "finish"}.'


def parse_text_message(text: str) -> dict[str, Any]:
    """A client text message as a JSON object with a string `type`; FrameRejected (bad_message) for
    anything else, and for text too long or too deeply nested to parse safely."""
    if len(text) > MAX_TEXT_CHARS:
        raise FrameRejected("bad_message", f"Text messages are at most {MAX_TEXT_CHARS} characters.")
    if _nesting(text) > MAX_TEXT_NESTING:
        raise FrameRejected("bad_message", BAD_MESSAGE_DETAIL)
    try:
        command = json.loads(text)
    except ValueError:
        command = None
    if not isinstance(command, dict) or not isinstance(command.get("type"), str):
        raise FrameRejected("bad_message", BAD_MESSAGE_DETAIL)
    return command


def _nesting(text: str) -> int:
    """How deep JSON brackets nest in `text` (outside strings); a linear scan, never recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_page_event(command: dict[str, Any], context: CaptureContext) -> PageEvent:
    """An `event` message; an ad id or media time that is not one of the study's ads or not a plain
    integer the column holds is recorded as unknown (None), never refused."""
    name = command.get("name")
    if command.get("type") != "event" or not isinstance(name, str) or name not in BROWSER_EVENTS:
        raise FrameRejected("bad_message", BAD_MESSAGE_DETAIL)
    ad_id = command.get("ad_id")
    media_time_ms = command.get("media_time_ms")
    known_ad = _is_wire_int(ad_id) and ad_id != BASELINE_AD_ID and ad_id in context.ad_durations_ms
    return PageEvent(
        name, ad_id if known_ad else None, media_time_ms if _is_wire_int(media_time_ms) else None
    )


@dataclass(frozen=True)
class UnplayableReport:
    """The browser says it cannot play this ad (`error`: why, one of MEDIA_ERRORS), stopped at this time."""

    ad_id: int
    error: str
    media_time_ms: int | None


# The type of the client message by which capture.js reports an ad its browser cannot play.
UNPLAYABLE_REPORT = "ad_unplayable"
# Why a browser cannot play an ad, as capture.js names it: the video element's MediaError (aborted, network,
# decode, not_supported), or play() refused for a media reason (NotSupportedError: not_supported, anything
# else but autoplay blocked or an interrupted play: play_failed).
MEDIA_ERRORS = frozenset({"aborted", "network", "decode", "not_supported", "play_failed"})
BAD_REPORT = "bad_report"
BAD_REPORT_DETAIL = (
    'An ad_unplayable report is {"type": "ad_unplayable", "ad_id": n, "error": "'
    + "|".join(sorted(MEDIA_ERRORS))
    + '", "media_time_ms": n|null}.'
)


def parse_unplayable_report(command: dict[str, Any]) -> UnplayableReport:
    """An `ad_unplayable` message, its values exactly as capture.js sends them: FrameRejected (bad_report)
    otherwise. Stricter than page events (whose odd values are recorded as unknown): this report ends the
    session, so it must name the ad and the reason. Whether the ad is the session's current one is decided
    with the session (validation.check_unplayable_ad)."""
    ad_id, error = command.get("ad_id"), command.get("error")
    media_time_ms = command.get("media_time_ms")
    if (
        not _is_wire_int(ad_id)
        or not isinstance(error, str)
        or error not in MEDIA_ERRORS
        or (media_time_ms is not None and not _is_wire_int(media_time_ms))
    ):
        raise FrameRejected(BAD_REPORT, BAD_REPORT_DETAIL)
    return UnplayableReport(ad_id, error, media_time_ms)


def _is_wire_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_WIRE_INT
