"""The path of a webcam frame from the socket to a stored FrameResult (see docs/architecture.md).

check_frame() validates one binary message; the socket hands it to its process's FrameBatcher
(batching.py), which calls enqueue_frames() with batches that mix sessions; the analysis backend (Celery
worker or in-process thread pool) runs analyze_and_store_frames(): the model, a bulk insert, and the acks
to the sockets (a frame is acked only once its row is stored).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from inference.pipeline import FaceReading, Pipeline, get_pipeline
from research_portal.analytics.rollups import do_update_rollups
from research_portal.capture.acks import post_acks
from research_portal.capture.batch_store import drop_batch, get_batch, put_batch
from research_portal.capture.flow import record_queued, record_stored
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import SMILE_LABEL, check_model_labels

logger = logging.getLogger(__name__)

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


def open_capture(token: str) -> CaptureContext:
    """Look up the session behind a socket token and mark it as viewing; refuse unknown or ended ones."""
    session = ParticipantSession.objects.select_related("study").filter(token=token).first()
    if session is None:
        raise CaptureRefused(4001, "unknown_session", "No participant session has this token.")
    if not session.is_capturing:
        raise CaptureRefused(4003, "session_closed", f"This session is {session.state}; it takes no frames.")
    if session.checks_passed_at is None:
        raise CaptureRefused(4003, "check_required", "The camera and face check comes before viewing.")
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
        next_seq=0 if session.last_enqueued_seq is None else session.last_enqueued_seq + 1,
        store_frames=session.study.store_frames,
    )


def check_frame(message: bytes, context: CaptureContext, now_ms: float | None = None) -> Frame:
    """Parse and validate one binary socket message; raise FrameRejected with a client-facing code."""
    if len(message) < FRAME_HEADER.size:
        raise FrameRejected("bad_header", f"A frame needs a {FRAME_HEADER.size}-byte header.")
    seq, ad_id, media_time_ms, capture_time_ms = FRAME_HEADER.unpack_from(message)
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
    if duration_ms and media_time_ms > duration_ms + MEDIA_TIME_SLACK_MS:
        raise FrameRejected(
            "bad_time", f"Media time {media_time_ms} ms is past the ad's end ({duration_ms} ms).", seq
        )
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    if not math.isfinite(capture_time_ms) or not (
        now_ms - MAX_CAPTURE_AGE_MS <= capture_time_ms <= now_ms + MAX_CAPTURE_CLOCK_SKEW_MS
    ):
        raise FrameRejected("bad_time", f"Capture time {capture_time_ms!r} is not a plausible time.", seq)
    return Frame(seq, ad_id, media_time_ms, capture_time_ms, jpeg)


class FrameRateLimiter:
    """Token bucket per socket: steady capture passes, a resend burst after a reconnect passes,
    a flood does not."""

    def __init__(self, fps: int, burst: int, clock=time.monotonic) -> None:
        # Three times the capture rate leaves room for resends while new frames keep arriving.
        self.rate = 3.0 * fps
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@cache
def analysis_thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=settings.CAPTURE_THREAD_WORKERS, thread_name_prefix="frame-analysis"
    )


def enqueue_frames(frames: list[dict[str, Any]], reply_to: str | None = None) -> None:
    """Hand one batch (frames of any sessions, as Frame.to_payload dicts) to the analysis backend; returns
    once it is safely queued. `reply_to`: the ack inbox of the web process's batcher (acks.py).
    Raises (and queues nothing) while the database is away: the caller keeps the frames, as workers could
    not store them anyway."""
    # Recorded first: a batch is never in the queue without its sessions knowing to wait for it.
    do_record_enqueued({frame["session_id"]: frame["seq"] for frame in sorted(frames, key=itemgetter("seq"))})
    if settings.CAPTURE_ANALYSIS_BACKEND == "celery":
        from research_portal.capture.tasks import analyze_frame_batch_task

        analyze_frame_batch_task.apply_async(args=(put_batch(frames), reply_to))
    else:
        analysis_thread_pool().submit(analyze_frames_in_thread, frames, reply_to)
    record_queued(len(frames), 1)


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
    rows = []
    for frame, reading in zip(frames, readings, strict=True):
        row = FrameResult(
            session_id=frame["session_id"],
            ad_id=frame["ad_id"] or None,  # BASELINE_AD_ID -> NULL
            seq=frame["seq"],
            media_time_ms=frame["media_time_ms"],
            captured_at=datetime.fromtimestamp(frame["capture_time_ms"] / 1000, tz=UTC),
            face_found=reading.primary_face is not None,
            error=(reading.error or "")[:200],
            model_version=pipeline.model_version,
        )
        face = reading.primary_face
        if face is not None:
            fill_face_columns(row, face)
        rows.append(row)
    return store_results(rows, reply_to, also_acked=sorted(stored_before), analysis_cpu_s=analysis_cpu_s)


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
) -> int:
    """Bulk insert; a frame stored before (a resend, a redelivered task) is skipped, never duplicated.
    Then ack the rows' frames, and `also_acked` (session id, seq) stored earlier, to the web process that
    queued them, count them for flow control (with the pipeline's CPU, `analysis_cpu_s`), and update the
    analytics rollups."""
    written = insert_frame_results(rows)
    if reply_to:
        do_ack_stored([(row.session_id, row.seq) for row in rows] + list(also_acked), reply_to)
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


def do_ack_stored(stored: list[tuple[int, int]], inbox: str) -> None:
    """One message per batch to the ack inbox of the web process that queued it (acks.py), which acks each
    session's socket. `stored`: (session id, seq) pairs. A lost ack (the socket moved to another process,
    Redis away) costs only a resend, which the unique (session, seq) constraint absorbs, so failures are
    logged, never raised."""
    seqs_by_session: dict[int, list[int]] = defaultdict(list)
    for session_id, seq in stored:
        seqs_by_session[session_id].append(seq)
    try:
        post_acks(inbox, [[session_id, sorted(seqs)] for session_id, seqs in seqs_by_session.items()])
    except Exception:
        logger.exception("could not ack stored frames of sessions %s", sorted(seqs_by_session))


def session_group(session_id: int) -> str:
    """The channel-layer group of a session's capture socket(s): second-tab takeovers go here."""
    return f"capture.session.{session_id}"
