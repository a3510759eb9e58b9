import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_ready

from research_portal.capture.analysis import analysis_pipeline, analyze_and_store_batch
from research_portal.capture.erasure import do_apply_retention
from research_portal.capture.failures import TRANSIENT_ERRORS
from research_portal.capture.flow import start_worker_heartbeat
from research_portal.capture.validation import do_validate_due_sessions

logger = logging.getLogger(__name__)

BATCH_TASK_OPTIONS = dict(
    # The message carries only the batch's key and the ack inbox (the frames wait in batch_store.py).
    serializer="msgpack",
    # Removed from the queue only once stored: a killed worker's batch is redelivered, and the unique
    # (session, seq) constraint makes the second delivery store nothing twice.
    acks_late=True,
    # The database or Redis away (restart, failover): retry with backoff, 1 s doubling to 30 s, about 5
    # minutes in all. Only such failures: rows whose values the database refuses are left out of the batch
    # and refused to their sockets (storage.store_results), the rest stored; a retry would change nothing.
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=False,
    max_retries=14,
)


@shared_task(**BATCH_TASK_OPTIONS)
def analyze_frame_batch_task(batch_key: str, reply_to: str | None = None) -> int:
    """One task per batch of frames (of any sessions, never one per frame), its frames waiting in Redis under
    `batch_key`; see queueing.enqueue_frames."""
    return analyze_and_store_batch(batch_key, reply_to)


@shared_task
def validate_due_sessions_task() -> int:
    """Periodic (settings.CELERY_BEAT_SCHEDULE; embedded: research_portal/ops/periodic.py): validate the
    sessions whose viewing ended, and end the abandoned ones, whether or not their end page is open."""
    return do_validate_due_sessions()


@worker_ready.connect
def announce_worker(sender: Any = None, **kwargs: Any) -> None:
    """Workers say they are alive (with their pool size) for /metrics and flow control."""
    start_worker_heartbeat(processes=sender.controller.concurrency, worker=sender.hostname)


@worker_process_init.connect
def load_the_model(**kwargs: Any) -> None:
    """Each analysis process loads the model before it takes a batch. Loaded by the first batch, it held
    that batch for seconds on a busy machine, and flow control read the queue behind it, with nothing
    stored yet, as an endless backlog: every socket was told to halve its rate."""
    try:
        pipeline = analysis_pipeline()
        logger.info("analysis model %s loaded at process start", pipeline.model_version)
    except Exception:  # the first batch raises it again, where it is reported (and /readyz says so)
        logger.exception("the analysis model could not be loaded at process start")


@shared_task(acks_late=True)
def apply_retention_task() -> dict[str, int]:
    """The periodic retention purge (CELERY_BEAT_SCHEDULE): raw readings and stored frames past each study's
    retention period."""
    result = do_apply_retention()
    return {
        "frame_results": result.frame_results,
        "frame_folders": result.frame_folders,
        "preview_sessions": result.preview_sessions,
    }
