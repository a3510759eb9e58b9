from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from research_portal.capture.flow import start_worker_heartbeat
from research_portal.capture.services import (
    TRANSIENT_ERRORS,
    analyze_and_store_batch,
    analyze_and_store_frames,
)

BATCH_TASK_OPTIONS = dict(
    # Batches carry a key (batch_store.py); the legacy task's frames are bytes, which msgpack carries as-is.
    serializer="msgpack",
    # Removed from the queue only once stored: a killed worker's batch is redelivered, and the unique
    # (session, seq) constraint makes the second delivery store nothing twice.
    acks_late=True,
    # The database or Redis away (restart, failover): retry with backoff, 1 s doubling to 30 s, about 5
    # minutes in all. Only such failures: rows whose values the database refuses are left out of the batch
    # and refused to their sockets (services.store_results), the rest stored; a retry would change nothing.
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=False,
    max_retries=14,
)


@shared_task(**BATCH_TASK_OPTIONS)
def analyze_frame_batch_task(batch_key: str, reply_to: str | None = None) -> int:
    """One task per batch of frames (of any sessions, never one per frame), its frames waiting in Redis under
    `batch_key`; see services.enqueue_frames."""
    return analyze_and_store_batch(batch_key, reply_to)


@shared_task(**BATCH_TASK_OPTIONS)
def analyze_frames_task(frames: list[dict[str, Any]], reply_to: str | None = None) -> int:
    """A batch with its frames inside the message, as queued by earlier web processes (rolling upgrade)."""
    return analyze_and_store_frames(frames, reply_to)


@shared_task(**BATCH_TASK_OPTIONS)
def analyze_batch_task(session_id: int, frames: list[dict[str, Any]], store_frames: bool = False) -> int:
    """The one-session batch format of earlier web processes, still queued during a rolling upgrade."""
    return analyze_and_store_frames(
        [{**frame, "session_id": session_id, "store_frames": store_frames} for frame in frames]
    )


@worker_ready.connect
def announce_worker(sender: Any = None, **kwargs: Any) -> None:
    """Workers say they are alive (with their pool size) for /metrics and flow control."""
    start_worker_heartbeat(processes=sender.controller.concurrency, worker=sender.hostname)
