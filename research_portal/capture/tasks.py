from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from research_portal.capture.services import analyze_and_store_batch


@shared_task(
    # Frames are bytes: msgpack carries them as-is (JSON would need base64, +33%).
    serializer="msgpack",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=12,
)
def analyze_batch_task(session_id: int, frames: list[dict[str, Any]], store_frames: bool = False) -> int:
    """One task per batch of a session's frames (never per frame); retried while the database is away."""
    return analyze_and_store_batch(session_id, frames, store_frames)
