"""The path of a webcam frame from the socket to a stored FrameResult (see docs/architecture.md).

check_frame() validates one binary message; the socket hands it to its process's FrameBatcher
(batching.py), which calls enqueue_frames() with batches that mix sessions; the analysis backend (Celery
worker or in-process thread pool) runs analyze_and_store_frames(): the model, a bulk insert, and the acks
to the sockets (a frame is acked only once its row is stored).

Failures are of two kinds (is_transient): the surroundings (database or broker unreachable), after which
the same frames are kept and tried again, and the frames themselves (a value a column cannot hold, a
session deleted meanwhile), after which only the frames at fault are refused (store_isolating_bad_data)
and the rest of their batch goes on. The socket's limits (frames, page events, text size, connects) are
here too, each in one place; docs/architecture.md, "Wire protocol", lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import kombu.exceptions
import redis
from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import InterfaceError, OperationalError, connection, connections, transaction
from django.utils import timezone

from inference.pipeline import FaceReading, Pipeline, get_pipeline
from research_portal.accounts.ratelimit import client_ip, parse_limit
from research_portal.analytics.rollups import do_update_rollups
from research_portal.capture.acks import RejectedFrames, post_acks
from research_portal.capture.batch_store import drop_batch, get_batch, put_batch
from research_portal.capture.flow import record_queued, record_stored
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.readings import SMILE_LABEL, check_model_labels

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ad id 0 on the wire: the neutral baseline screen before the first ad (stored with ad NULL).
BASELINE_AD_ID = 0
# seq, ad_id, media_time_ms (uint32 each), capture_time_ms (float64 epoch ms), network byte order.
FRAME_HEADER = struct.Struct("!IIId")
JPEG_MAGIC = b"\xff\xd8\xff"
# A frame may carry a media time a little past the ad's probed duration (rounding, last frame).
MEDIA_TIME_SLACK_MS = 2_000
# Resent frames after a long network drop are old but real; a day is beyond any viewing session.
MAX_CAPTURE_AGE_MS = 24 * 3600 * 1000
MAX_CAPTURE_CLOCK_SKEW_MS = 10 * 60 * 1000
# Rows per INSERT statement: 27 values each stays far below SQLite's and Postgres' bound-parameter limits.
INSERT_CHUNK_ROWS = 500
# Every integer of the header lands in a PositiveIntegerField, a 4-byte signed integer in Postgres.
MAX_WIRE_INT = 2**31 - 1
# A session's frames are numbered from 0, at most at the study's rate, and only after the camera check
# (capture.js numbers every frame it grabs, a reloaded page continues from `next_seq`). A seq beyond twice
# that rate since the check, plus this headroom, was never grabbed: refused (`bad_seq`), so nobody can push
# the session's numbering to the column's end. The headroom also holds above the `next_seq` the socket
# handed out, so a client may always go on from there.
SEQ_RATE_FACTOR = 2
SEQ_HEADROOM = 1000

# Client-facing codes of refusals (docs/architecture.md, "Wire protocol").
UNSTORABLE = "unstorable"  # taken by the socket, then its values could not be stored: refused for good
UNSTORABLE_DETAIL = "The server could not store this frame's values; it is dropped."
RATE_LIMITED = "rate_limited"
# Close codes besides those of open_capture's refusals (4001, 4003) and the consumer's (4008, 4009).
CLOSE_TOO_MANY_CONNECTS = 4029

# Text messages are small flat JSON objects (`finish`, `event`): anything longer or deeper is refused before
# it is parsed (deep nesting made json.loads raise RecursionError).
MAX_TEXT_CHARS = 1024
MAX_TEXT_NESTING = 2
# Refusals with seq null (rate_limited) a socket may collect before it counts as a flood (closed with
# 4008), refilled at this rate: a reconnect's resend burst from an older capture.js stays below it.
REFUSAL_BUDGET = 2000
REFUSALS_PER_S = 10.0
# Frames refused for good (bad values) a socket may collect before it is closed with 4008.
MAX_REJECTIONS = 50

# Limits with their defaults: settings.<NAME>, else the environment variable NAME, else this.
# Failures of the surroundings, not of the frames: the same frames succeed once the database or the broker
# answers again, so they are kept and tried again (batcher, Celery retries). Anything else (DataError,
# IntegrityError, a bad value) was caused by the data and is never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica promoted under us
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


class FrameRejected(Exception):
    """A binary message the socket will not accept; `code` goes to the client verbatim."""

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
class Frame:
    seq: int
    ad_id: int
    media_time_ms: int
    capture_time_ms: float
    jpeg: bytes

    def to_payload(self, session_id: int, store_frames: bool = False, resend: bool = False) -> dict[str, Any]:
        """Plain types only, so the batch survives the msgpack trip through the broker. `resend`: the socket
        saw this seq (or a later one) before, so the frame may be stored already (see stored_frame_keys)."""
        return {
            "session_id": session_id,
            "store_frames": store_frames,
            "seq": self.seq,
            "ad_id": self.ad_id,
            "media_time_ms": self.media_time_ms,
            "capture_time_ms": self.capture_time_ms,
            "jpeg": self.jpeg,
            "resend": resend,
        }


@dataclass(frozen=True)
class CaptureContext:
    """What the socket needs to know about its session, loaded once when it connects."""

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


def open_capture(token: str, client_address: str = "") -> CaptureContext:
    """Look up the session behind a socket token and mark it as viewing; refuse unknown or ended ones, and
    connects beyond the limits per token and per client address (check_connect_rate)."""
    check_connect_rate(token, client_address)
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


def check_connect_rate(token: str, client_address: str) -> None:
    """Refuse (4029) a socket connect beyond CAPTURE_CONNECTS_PER_IP for its client address or
    CAPTURE_CONNECTS_PER_TOKEN for its token. Every attempt counts, refused ones too. With the cache away
    (Redis down) connects are let through: capture must not stop for a counter."""
    limits = [("token", token, settings.CAPTURE_CONNECTS_PER_TOKEN)]
    if client_address:
        limits.insert(0, ("ip", client_address, settings.CAPTURE_CONNECTS_PER_IP))
    for kind, identity, limit in limits:
        count, seconds = parse_limit(limit)
        try:
            allowed = _count_connect(f"capture:connects:{kind}:{_digest(identity)}", count, seconds)
        except Exception:  # noqa: BLE001 - the cache is advisory here
            logger.warning("connect rate not counted (cache away); letting the socket in", exc_info=True)
            return
        if not allowed:
            raise CaptureRefused(
                CLOSE_TOO_MANY_CONNECTS,
                "too_many_connections",
                f"Too many connections for this {'session' if kind == 'token' else 'address'}; "
                "wait a minute and try again.",
            )


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _count_connect(key: str, count: int, seconds: int) -> bool:
    """Fixed window, as accounts.ratelimit.hit: False once `count` is exceeded within `seconds`."""
    if django_cache.add(key, 1, timeout=seconds):
        return True
    try:
        return django_cache.incr(key) <= count
    except ValueError:  # expired between add and incr
        django_cache.add(key, 1, timeout=seconds)
        return True


def check_frame(message: bytes, context: CaptureContext, now_ms: float | None = None) -> Frame:
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


class TokenBucket:
    """`rate` per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def allow(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def set_rate(self, rate: float) -> None:
        self._refill()  # what was earned at the old rate stays earned
        self.rate = float(rate)


@dataclass
class SocketLimits:
    """What one capture socket may still do. Frames and page events are limited per socket, so a flooding
    client is refused (rate_limited, seq null: keep it, resend later) while every other socket goes on; a
    socket refused too often, or sending too many bad frames, is a flood (closed with 4008)."""

    fps: float
    frames: TokenBucket
    events: TokenBucket
    refusals: TokenBucket = field(default_factory=lambda: TokenBucket(REFUSALS_PER_S, REFUSAL_BUDGET))
    rejections: int = 0

    @classmethod
    def for_socket(cls, fps: float, flow_scale: float = 1.0) -> SocketLimits:
        frame_rate = settings.CAPTURE_FRAME_RATE_FACTOR * fps * flow_scale
        return cls(
            fps=fps,
            frames=TokenBucket(frame_rate, settings.CAPTURE_FRAME_BURST),
            events=TokenBucket(settings.CAPTURE_EVENTS_PER_S, settings.CAPTURE_EVENT_BURST),
        )

    def set_flow_scale(self, scale: float) -> None:
        """Flow control lowered (or restored) the capture rate: the frames allowed follow it."""
        self.frames.set_rate(settings.CAPTURE_FRAME_RATE_FACTOR * self.fps * scale)

    def check_frame_rate(self) -> None:
        if not self.frames.allow():
            raise FrameRejected(RATE_LIMITED, "Too many frames; slow down.")

    def check_event_rate(self) -> None:
        if not self.events.allow():
            raise FrameRejected(RATE_LIMITED, "Too many page events; this one is not recorded.")

    def is_flood_after(self, refused: FrameRejected) -> bool:
        """Count a refusal; True once the socket should be closed as a flood."""
        if refused.seq is None and refused.code == RATE_LIMITED:
            return not self.refusals.allow()
        self.rejections += 1
        return self.rejections > MAX_REJECTIONS


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


def check_text_message(text: str) -> dict[str, Any]:
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


def check_page_event(command: dict[str, Any], context: CaptureContext) -> PageEvent:
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


def _is_wire_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_WIRE_INT


@cache
def analysis_thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=settings.CAPTURE_THREAD_WORKERS, thread_name_prefix="frame-analysis"
    )


def enqueue_frames(frames: list[dict[str, Any]], reply_to: str | None = None) -> list[RejectedFrames]:
    """Hand one batch (frames of any sessions, as Frame.to_payload dicts) to the analysis backend; returns
    once it is safely queued. `reply_to`: the ack inbox of the web process's batcher (acks.py).

    Returns the frames refused because of their data (a session whose queued seq cannot be recorded): the
    rest of the batch is queued all the same. Raises (and queues nothing) on a transient failure, the
    database or the broker away: the caller keeps the frames, as workers could not store them anyway."""
    newest: dict[int, int] = {}
    for frame in frames:
        newest[frame["session_id"]] = max(newest.get(frame["session_id"], -1), frame["seq"])
    # Recorded first: a batch is never in the queue without its sessions knowing to wait for it.
    _, failed = store_isolating_bad_data(sorted(newest.items()), lambda part: do_record_enqueued(dict(part)))
    rejected = []
    if failed:
        refused = {session_id for (session_id, _), _ in failed}
        logger.warning(
            "frames of %s sessions refused: their queued seq cannot be recorded",
            len(refused),
            extra={"session_ids": sorted(refused), "errors": sorted({describe_error(e) for _, e in failed})},
        )
        rejected = rejected_by_session([frame for frame in frames if frame["session_id"] in refused])
        frames = [frame for frame in frames if frame["session_id"] not in refused]
    if frames:
        if settings.CAPTURE_ANALYSIS_BACKEND == "celery":
            from research_portal.capture.tasks import analyze_frame_batch_task

            analyze_frame_batch_task.apply_async(args=(put_batch(frames), reply_to))
        else:
            analysis_thread_pool().submit(analyze_frames_in_thread, frames, reply_to)
        record_queued(len(frames), 1)
    return rejected


def rejected_by_session(
    frames: Sequence[dict[str, Any]], code: str = UNSTORABLE, detail: str = UNSTORABLE_DETAIL
) -> list[RejectedFrames]:
    """Frames (payload dicts, or anything with session_id and seq) refused for good, one entry per session."""
    seqs: dict[int, list[int]] = defaultdict(list)
    for frame in frames:
        seqs[frame["session_id"]].append(frame["seq"])
    return [RejectedFrames(session_id, tuple(sorted(s)), code, detail) for session_id, s in seqs.items()]


def store_isolating_bad_data(
    items: list[T], store: Callable[[list[T]], int | None]
) -> tuple[int, list[tuple[T, BaseException]]]:
    """`store(items)` in one go; when that fails because of the data (not is_transient), each half is
    stored on its own, down to single items, so only the items that fail alone are left out. Returns what
    `store` returned, summed, and the items left out with their errors. Transient errors propagate.

    The normal case costs one attempt; a bad item among 32 costs about ten."""
    if not items:
        return 0, []
    try:
        with _one_attempt():
            return store(items) or 0, []
    except Exception as error:
        if is_transient(error):
            raise
        if len(items) == 1:
            return 0, [(items[0], error)]
    middle = len(items) // 2
    done_first, failed_first = store_isolating_bad_data(items[:middle], store)
    done_second, failed_second = store_isolating_bad_data(items[middle:], store)
    return done_first + done_second, failed_first + failed_second


@contextmanager
def _one_attempt() -> Iterator[None]:
    """An attempt that may fail on its data: inside a transaction a savepoint, so the failure leaves the
    transaction usable; otherwise (autocommit) the statement is its own transaction already."""
    if connection.in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield


def describe_error(error: BaseException) -> str:
    """One line for logs: the error's type and first line (no values of the rows)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}"[:200] if lines else type(error).__name__


def do_record_enqueued(last_seqs: dict[int, int]) -> None:
    """Remember each session's newest queued frame, in one statement: validation waits for its reading.

    Raw SQL: the ORM's CASE over a batch's 32 sessions took 3 ms of CPU per batch to build and compile."""
    if not last_seqs:
        return
    table = connection.ops.quote_name(ParticipantSession._meta.db_table)
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"  # SQLite's two-argument MAX
    newest = " UNION ALL ".join(["SELECT %s AS id, %s AS seq"] * len(last_seqs))
    params: list[Any] = [connection.ops.adapt_datetimefield_value(timezone.now())]
    for session_id, seq in last_seqs.items():
        params += [int(session_id), int(seq)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_enqueued_at = %s,"
            f" last_enqueued_seq = {greatest}(COALESCE({table}.last_enqueued_seq, 0), newest.seq)"
            f" FROM ({newest}) AS newest WHERE {table}.id = newest.id",
            params,
        )


def analyze_frames_in_thread(frames: list[dict[str, Any]], reply_to: str | None = None) -> None:
    try:
        analyze_and_store_frames(frames, reply_to)
    except Exception:
        logger.exception("a batch of %s frames failed in the embedded analyser", len(frames))
    finally:
        # Pool threads live on; close their connection so none is left open between batches.
        connections.close_all()


def analyze_and_store_batch(batch_key: str, reply_to: str | None = None) -> int:
    """A batch queued with enqueue_frames: its frames wait in Redis under `batch_key` (batch_store.py) until
    they are stored. Returns rows written; 0 when the batch is gone (expired, lost with Redis, or stored and
    dropped by an earlier delivery): frames never stored were never acked, so their clients resend them."""
    frames = get_batch(batch_key)
    if frames is None:
        logger.warning("frame batch %s is gone from Redis; its unacked frames will be resent", batch_key)
        return 0
    written = analyze_and_store_frames(frames, reply_to)
    drop_batch(batch_key)
    return written


def analyze_and_store_frames(frames: list[dict[str, Any]], reply_to: str | None = None) -> int:
    """Run the model on a batch of frames (of any sessions) and store one FrameResult per frame, then ack
    them to the web process that queued them (`reply_to`). Returns rows written (a frame stored before is
    skipped, and acked again).

    The JPEGs are dropped afterwards unless the frame's study opted in to keeping them (`store_frames`).
    """
    stored_before = stored_frame_keys(frames)
    if stored_before:
        # Resends of frames stored meanwhile (their ack was late or lost): acked again, never analysed again.
        # Under overload, when the queue holds frames longer than the clients' resend timeout, this is what
        # keeps resends from eating the workers' time (docs/scaling.md, "Backpressure").
        frames = [frame for frame in frames if (frame["session_id"], frame["seq"]) not in stored_before]
    kept = [frame for frame in frames if frame.get("store_frames")]
    if kept:
        store_frame_images(kept)
    pipeline = analysis_pipeline()
    # The pipeline runs in this thread (ONNX Runtime and OpenCV one thread each), so thread time is its CPU.
    analysis_started = time.thread_time()
    readings = pipeline.analyze_jpegs([frame["jpeg"] for frame in frames]) if frames else []
    analysis_cpu_s = time.thread_time() - analysis_started
    rows, unbuildable = [], []
    for frame, reading in zip(frames, readings, strict=True):
        try:
            rows.append(frame_result_row(frame, reading, pipeline.model_version))
        except (ValueError, TypeError, OverflowError, KeyError):  # a value no row can hold
            logger.warning(
                "frame %s of session %s has values no row can hold",
                frame.get("seq"),
                frame.get("session_id"),
                exc_info=True,
            )
            unbuildable.append(frame)
    return store_results(
        rows,
        reply_to,
        also_acked=sorted(stored_before),
        analysis_cpu_s=analysis_cpu_s,
        rejected=rejected_by_session(unbuildable),
    )


def frame_result_row(frame: dict[str, Any], reading: Any, model_version: str) -> FrameResult:
    row = FrameResult(
        session_id=int(frame["session_id"]),
        ad_id=frame["ad_id"] or None,  # BASELINE_AD_ID -> NULL
        seq=int(frame["seq"]),
        media_time_ms=int(frame["media_time_ms"]),
        captured_at=datetime.fromtimestamp(frame["capture_time_ms"] / 1000, tz=UTC),
        face_found=reading.primary_face is not None,
        error=(reading.error or "")[:200],
        model_version=model_version,
    )
    face = reading.primary_face
    if face is not None:
        fill_face_columns(row, face)
    return row


def analysis_pipeline() -> Pipeline:
    """This process's pipeline, once its model's labels are known to fit FrameResult's columns
    (ModelLabelsError otherwise: a deployment error, also reported by /readyz)."""
    pipeline = get_pipeline()
    model = (pipeline.model_version, pipeline.labels)
    if model not in _checked_models:
        check_model_labels(pipeline.labels)
        _checked_models.add(model)
    return pipeline


_checked_models: set[tuple[str, tuple[str, ...]]] = set()


def stored_frame_keys(frames: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(session id, seq) of the batch's resent frames that are stored already. One indexed query, and only
    for batches holding frames their socket flagged as resends, so the normal path pays nothing."""
    resent = {(frame["session_id"], frame["seq"]) for frame in frames if frame.get("resend")}
    if not resent:
        return set()
    stored = FrameResult.objects.filter(
        session_id__in={session_id for session_id, _ in resent}, seq__in={seq for _, seq in resent}
    ).values_list("session_id", "seq")
    return resent.intersection(stored)


def fill_face_columns(row: FrameResult, face: FaceReading) -> None:
    """The face's box, score, quality and readings: each of the model's labels into its column (the labels
    were checked against the columns when the pipeline was loaded, `analysis_pipeline`)."""
    row.face_x, row.face_y, row.face_w, row.face_h = (int(v) for v in face.box)
    row.face_score = float(face.score)
    for label, probability in zip(face.labels, face.probabilities.tolist(), strict=True):
        setattr(row, label, probability)
    row.smile = getattr(row, SMILE_LABEL)
    row.valence = None if face.valence is None else float(face.valence)
    row.quality = None if face.quality is None else float(face.quality.score)


def stored_frames_dir(session_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "frames" / str(session_id)


def store_frame_images(frames: list[dict[str, Any]]) -> None:
    """Only for studies that opted in: keep each JPEG as frames/<session>/<seq>.jpg under MEDIA_ROOT."""
    for frame in frames:
        folder = stored_frames_dir(frame["session_id"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{frame['seq']}.jpg").write_bytes(frame["jpeg"])


def store_results(
    rows: list[FrameResult],
    reply_to: str | None = None,
    also_acked: Sequence[tuple[int, int]] = (),
    analysis_cpu_s: float = 0.0,
    rejected: Sequence[RejectedFrames] = (),
) -> int:
    """Bulk insert; a frame stored before (a resend, a redelivered task) is skipped, never duplicated, and
    rows whose values the database refuses (DataError, IntegrityError: e.g. their session was deleted
    meanwhile) are left out while the rest of the batch is stored (store_isolating_bad_data).
    Then ack the stored rows' frames, and `also_acked` (session id, seq) stored earlier, to the web process
    that queued them, with the frames refused (`rejected` and the rows left out), count them for flow
    control (with the pipeline's CPU, `analysis_cpu_s`), and update the analytics rollups."""
    written, failed = store_isolating_bad_data(rows, insert_frame_results)
    if failed:
        left_out = {id(row) for row, _ in failed}
        logger.warning(
            "%s frames not stored: the database refused their values",
            len(failed),
            extra={
                "frames": [[row.session_id, row.seq] for row, _ in failed][:50],
                "errors": sorted({describe_error(error) for _, error in failed}),
            },
        )
        rows = [row for row in rows if id(row) not in left_out]
        refused = [{"session_id": row.session_id, "seq": row.seq} for row, _ in failed]
        rejected = [*rejected, *rejected_by_session(refused)]
    if reply_to:
        do_ack_stored([(row.session_id, row.seq) for row in rows] + list(also_acked), reply_to, rejected)
    # Frames stored before leave the queue too: flow control's service rate counts them.
    record_stored(len(rows) + len(also_acked), sum(1 for row in rows if row.error), analysis_cpu_s)
    do_update_rollups(rows)  # analytics (issue 5): per-second rollups + live dashboards; never raises
    return written


def insert_frame_results(rows: list[FrameResult]) -> int:
    """One multi-row INSERT ... ON CONFLICT DO NOTHING: a (session, seq) stored before is skipped. Returns the
    rows inserted.

    Plain SQL because the ORM's bulk_create prepared each of a batch's ~900 values through its field: 2 ms of
    CPU per 32-row batch in the analysing process, about a tenth of what it spends besides the model."""
    if not rows:
        return 0
    fields = [field for field in FrameResult._meta.concrete_fields if not field.primary_key]
    # Plain Python values for the driver (readings may hold numpy scalars; SQLite stores datetimes as text).
    converters = {
        "FloatField": float,
        "IntegerField": int,
        "PositiveIntegerField": int,
        "DateTimeField": connection.ops.adapt_datetimefield_value,
    }
    converted = [
        (index, converters[field.get_internal_type()])
        for index, field in enumerate(fields)
        if field.get_internal_type() in converters
    ]
    stored_at = timezone.now()
    table = connection.ops.quote_name(FrameResult._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    written = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_CHUNK_ROWS):
            chunk = rows[start : start + INSERT_CHUNK_ROWS]
            params: list[Any] = []
            for row in chunk:
                row.stored_at = stored_at
                values = [row.__dict__[field.attname] for field in fields]
                for index, convert in converted:
                    if values[index] is not None:
                        values[index] = convert(values[index])
                params += values
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([row_sql] * len(chunk))} "
                "ON CONFLICT DO NOTHING",
                params,
            )
            written += cursor.rowcount
    return written


def do_ack_stored(stored: list[tuple[int, int]], inbox: str, rejected: Sequence[RejectedFrames] = ()) -> None:
    """One message per batch to the ack inbox of the web process that queued it (acks.py), which acks each
    session's socket (and refuses the `rejected` frames). `stored`: (session id, seq) pairs. A lost ack (the
    socket moved to another process, Redis away) costs only a resend, which the unique (session, seq)
    constraint absorbs, so failures are logged, never raised."""
    seqs_by_session: dict[int, list[int]] = defaultdict(list)
    for session_id, seq in stored:
        seqs_by_session[session_id].append(seq)
    try:
        post_acks(
            inbox, [[session_id, sorted(seqs)] for session_id, seqs in seqs_by_session.items()], rejected
        )
    except Exception:
        logger.exception("could not ack stored frames of sessions %s", sorted(seqs_by_session))


def session_group(session_id: int) -> str:
    """The channel-layer group of a session's capture socket(s): second-tab takeovers go here."""
    return f"capture.session.{session_id}"
