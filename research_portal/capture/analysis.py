"""Analysis: the model reads a batch of queued frames (of any sessions) and storage.py stores the readings.

Runs where the analysis backend runs it (queueing.py): in a Celery worker for a batch waiting in Redis
(analyze_and_store_batch, from tasks.py), or in a thread of the web process (analyze_and_store_frames).
"""

from __future__ import annotations

import logging
import time

from inference.pipeline import Pipeline, get_pipeline
from research_portal.capture.batch_store import drop_batch, get_batch
from research_portal.capture.failures import rejected_by_session
from research_portal.capture.readings import check_model_labels
from research_portal.capture.storage import (
    frame_result_row,
    store_frame_images,
    store_results,
    stored_frame_keys,
)
from research_portal.capture.wire import QueuedFrame

logger = logging.getLogger(__name__)


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


def analyze_and_store_batch(batch_key: str, reply_to: str | None = None) -> int:
    """A batch queued by the Celery backend: its frames wait in Redis under `batch_key` (batch_store.py) until
    they are stored. Returns rows written; 0 when the batch is gone (expired, lost with Redis, or stored and
    dropped by an earlier delivery): frames never stored were never acked, so their clients resend them."""
    frames = get_batch(batch_key)
    if frames is None:
        logger.warning("frame batch %s is gone from Redis; its unacked frames will be resent", batch_key)
        return 0
    written = analyze_and_store_frames(frames, reply_to)
    drop_batch(batch_key)
    return written


def analyze_and_store_frames(frames: list[QueuedFrame], reply_to: str | None = None) -> int:
    """Run the model on a batch of frames (of any sessions) and store one FrameResult per frame, then ack
    them to the web process that queued them (`reply_to`). Returns rows written (a frame stored before is
    skipped, and acked again).

    The JPEGs are dropped afterwards unless the frame's study opted in to keeping them (`store_frames`).
    """
    busy_since = time.monotonic()
    stored_before = stored_frame_keys(frames)
    if stored_before:
        # Resends of frames stored meanwhile (their ack was late or lost): acked again, never analysed again.
        # Under overload, when the queue holds frames longer than the clients' resend timeout, this is what
        # keeps resends from eating the workers' time (docs/scaling.md, "Backpressure").
        frames = [frame for frame in frames if (frame.session_id, frame.seq) not in stored_before]
    kept = [frame for frame in frames if frame.store_frames]
    if kept:
        store_frame_images(kept)
    pipeline = analysis_pipeline()
    # The pipeline runs in this thread (ONNX Runtime and OpenCV one thread each), so thread time is its CPU.
    analysis_started = time.thread_time()
    readings = pipeline.analyze_jpegs([frame.jpeg for frame in frames]) if frames else []
    analysis_cpu_s = time.thread_time() - analysis_started
    rows, unbuildable = [], []
    for frame, reading in zip(frames, readings, strict=True):
        try:
            rows.append(frame_result_row(frame, reading, pipeline.model_version))
        except (ValueError, TypeError, OverflowError):  # a value no row can hold
            logger.warning(
                "frame %s of session %s has values no row can hold",
                frame.seq,
                frame.session_id,
                exc_info=True,
            )
            unbuildable.append((frame.session_id, frame.seq))
    return store_results(
        rows,
        reply_to,
        also_acked=sorted(stored_before),
        analysis_cpu_s=analysis_cpu_s,
        rejected=rejected_by_session(unbuildable),
        busy_since=busy_since,
    )
