"""Storage: the readings of a batch become FrameResult rows in one INSERT, and the web process that queued
them hears which frames are stored (acks.py), so that a frame is acked only once its row is in the database.

A frame stored before (a resend, a redelivered task) is skipped, never duplicated: unique (session, seq) and
ON CONFLICT DO NOTHING. Rows the database refuses for their values are left out and refused to their sockets,
while the rest of the batch is stored (failures.store_isolating_bad_data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from inference.pipeline import FaceReading, FrameReading
from research_portal.capture.acks import RejectedFrames, do_ack_stored
from research_portal.capture.failures import describe_error, rejected_by_session, store_isolating_bad_data
from research_portal.capture.flow import record_stored
from research_portal.capture.models import FrameResult
from research_portal.capture.readings import SMILE_LABEL
from research_portal.capture.signals import frames_stored
from research_portal.capture.wire import QueuedFrame

logger = logging.getLogger(__name__)

# Rows per INSERT statement: 30 values each stays far below SQLite's and Postgres' bound-parameter limits.
INSERT_CHUNK_ROWS = 500


def stored_frame_keys(frames: list[QueuedFrame]) -> set[tuple[int, int]]:
    """(session id, seq) of the batch's resent frames that are stored already. One indexed query, and only
    for batches holding frames their socket flagged as resends, so the normal path pays nothing."""
    resent = {(frame.session_id, frame.seq) for frame in frames if frame.resend}
    if not resent:
        return set()
    stored = FrameResult.objects.filter(
        session_id__in={session_id for session_id, _ in resent}, seq__in={seq for _, seq in resent}
    ).values_list("session_id", "seq")
    return resent.intersection(stored)


def frame_result_row(frame: QueuedFrame, reading: FrameReading, model_version: str) -> FrameResult:
    """The row of one frame and its reading; ValueError, TypeError or OverflowError for values no row
    holds."""
    row = FrameResult(
        session_id=int(frame.session_id),
        ad_id=frame.ad_id or None,  # BASELINE_AD_ID -> NULL
        seq=int(frame.seq),
        media_time_ms=int(frame.media_time_ms),
        captured_at=datetime.fromtimestamp(frame.capture_time_ms / 1000, tz=UTC),
        face_found=reading.primary_face is not None,
        error=(reading.error or "")[:200],
        model_version=model_version,
    )
    face = reading.primary_face
    if face is not None:
        fill_face_columns(row, face)
    return row


def fill_face_columns(row: FrameResult, face: FaceReading) -> None:
    """The face's box, score, quality, pose and readings: each of the model's labels into its column (the
    labels were checked against the columns when the pipeline was loaded, analysis.analysis_pipeline)."""
    row.face_x, row.face_y, row.face_w, row.face_h = (int(v) for v in face.box)
    row.face_score = float(face.score)
    for label, probability in zip(face.labels, face.probabilities.tolist(), strict=True):
        setattr(row, label, probability)
    row.smile = getattr(row, SMILE_LABEL)
    row.valence = None if face.valence is None else float(face.valence)
    row.quality = None if face.quality is None else float(face.quality.score)
    row.face_yaw = face.yaw
    row.face_pitch = face.pitch
    row.attending = face.attending


def stored_frames_dir(session_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "frames" / str(session_id)


def store_frame_images(frames: list[QueuedFrame]) -> None:
    """Only for studies that opted in: keep each JPEG as frames/<session>/<seq>.jpg under MEDIA_ROOT."""
    for frame in frames:
        folder = stored_frames_dir(frame.session_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{frame.seq}.jpg").write_bytes(frame.jpeg)


def store_results(
    rows: list[FrameResult],
    reply_to: str | None = None,
    also_acked: Sequence[tuple[int, int]] = (),
    analysis_cpu_s: float = 0.0,
    rejected: Sequence[RejectedFrames] = (),
    busy_since: float | None = None,
) -> int:
    """Bulk insert; a frame stored before (a resend, a redelivered task) is skipped, never duplicated, and
    rows whose values the database refuses (DataError, IntegrityError: e.g. their session was deleted
    meanwhile) are left out while the rest of the batch is stored (store_isolating_bad_data).
    Then ack the stored rows' frames, and `also_acked` (session id, seq) stored earlier, to the web process
    that queued them, with the frames refused (`rejected` and the rows left out), count them for flow
    control (with the pipeline's CPU, `analysis_cpu_s`, and the batch's wall time since `busy_since`, a
    time.monotonic()), and update the analytics rollups."""
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
        rejected = [*rejected, *rejected_by_session((row.session_id, row.seq) for row, _ in failed)]
    if reply_to:
        do_ack_stored([(row.session_id, row.seq) for row in rows] + list(also_acked), reply_to, rejected)
    # Frames stored before leave the queue too: flow control's service rate counts them.
    busy_s = time.monotonic() - busy_since if busy_since is not None else 0.0
    record_stored(len(rows) + len(also_acked), sum(1 for row in rows if row.error), analysis_cpu_s, busy_s)
    frames_stored.send(sender=FrameResult, rows=rows)  # analytics: rollups and live dashboards
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
