"""Queueing: a batch from the batcher (batching.py) to this deployment's analysis backend.

enqueue_frames() first records each session's newest queued seq (validation waits for its reading), then
hands the batch to the backend: in production the frames go to Redis as one msgpack value (batch_store.py)
and one Celery task carries only its key (tasks.py); in embedded mode a thread of this process analyses the
batch. Either backend reports how many batches wait for analysis (queue_batches), for flow control (flow.py).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from research_portal.capture.acks import RejectedFrames
from research_portal.capture.analysis import analyze_and_store_frames
from research_portal.capture.batch_store import put_batch
from research_portal.capture.failures import describe_error, rejected_by_session, store_isolating_bad_data
from research_portal.capture.flow import record_queued
from research_portal.capture.models import ParticipantSession
from research_portal.capture.tasks import analyze_frame_batch_task
from research_portal.capture.wire import QueuedFrame
from research_portal.deployment import ModeDependent

logger = logging.getLogger(__name__)


class ThreadPoolBackend:
    """Embedded mode: CAPTURE_THREAD_WORKERS threads of this process analyse the batches, in order."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=settings.CAPTURE_THREAD_WORKERS, thread_name_prefix="frame-analysis"
        )
        self.changed = threading.Condition()
        self.waiting = 0  # submitted, not started
        self.unfinished = 0  # submitted, not finished

    def submit(self, frames: list[QueuedFrame], reply_to: str | None) -> None:
        with self.changed:
            self.waiting += 1
            self.unfinished += 1
        try:
            self.executor.submit(self._analyze, frames, reply_to)
        except BaseException:
            self._finished(started=False)
            raise

    def _analyze(self, frames: list[QueuedFrame], reply_to: str | None) -> None:
        with self.changed:
            self.waiting -= 1
        try:
            analyze_and_store_frames(frames, reply_to)
        except Exception:
            logger.exception("a batch of %s frames failed in the embedded analyser", len(frames))
        finally:
            # Pool threads live on; close their connection so none is left open between batches.
            connections.close_all()
            self._finished(started=True)

    def _finished(self, started: bool) -> None:
        with self.changed:
            if not started:
                self.waiting -= 1
            self.unfinished -= 1
            self.changed.notify_all()

    def queue_batches(self) -> int:
        return self.waiting

    def wait_until_done(self, timeout_s: float) -> bool:
        """Wait until every batch submitted so far is analysed and stored (False if `timeout_s` passed)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.unfinished == 0, timeout_s)


class CeleryBackend:
    """Production: the frames wait in Redis (batch_store.py) and a worker's task (tasks.py) analyses them."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def submit(self, frames: list[QueuedFrame], reply_to: str | None) -> None:
        analyze_frame_batch_task.apply_async(args=(put_batch(frames), reply_to))

    def queue_batches(self) -> int:
        """The broker's queue, a Redis list: one message per batch."""
        return int(self.redis.llen(settings.CELERY_TASK_DEFAULT_QUEUE))


analysis_backend: ModeDependent[ThreadPoolBackend | CeleryBackend] = ModeDependent(
    embedded=ThreadPoolBackend, production=CeleryBackend
)


def enqueue_frames(frames: list[QueuedFrame], reply_to: str | None = None) -> list[RejectedFrames]:
    """Hand one batch (frames of any sessions) to the analysis backend; returns once it is safely queued.
    `reply_to`: the ack inbox of the web process's batcher (acks.py).

    Returns the frames refused because of their data (a session whose queued seq cannot be recorded): the
    rest of the batch is queued all the same. Raises (and queues nothing) on a transient failure, the
    database or the broker away: the caller keeps the frames, as workers could not store them anyway."""
    newest: dict[int, int] = {}
    for frame in frames:
        newest[frame.session_id] = max(newest.get(frame.session_id, -1), frame.seq)
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
        rejected = rejected_by_session((f.session_id, f.seq) for f in frames if f.session_id in refused)
        frames = [frame for frame in frames if frame.session_id not in refused]
    if frames:
        analysis_backend().submit(frames, reply_to)
        record_queued(len(frames), 1)
    return rejected


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
