"""At most one rollup refresh per session per settings.ANALYTICS_ROLLUP_INTERVAL_S, however often its frames
are stored.

A refresh costs about 12 ms of database work per session whatever the number of new frames, while a batch
brings a session only a few frames (measured: 4 frames of 8 sessions per batch spent 3.6 ms per frame in
refreshes, more than the model's 2.3 ms). So the first batch of a quiet session refreshes at once (leading
edge); later batches inside the interval only add their (ad, second) keys to the session's pending set, and
one refresh at the end of the interval covers them all (trailing edge: a Celery task with a countdown, or a
timer thread in embedded mode). Pending keys are removed only after their refresh committed, so a worker
that dies in between leaves them for the next refresh, or for the periodic reconcile (flush_all_pending).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from functools import cache

from django.conf import settings
from django.db import connections

from research_portal.analytics.live import windows

logger = logging.getLogger(__name__)

RolledKey = tuple[int | None, int]  # (ad id, or None for the baseline; second of the ad)


def rollup_interval_s() -> float:
    return float(getattr(settings, "ANALYTICS_ROLLUP_INTERVAL_S", 5.0))


def _encode(key: RolledKey) -> str:
    ad_id, second = key
    return f"{'b' if ad_id is None else ad_id}:{second}"


def _decode(member: str) -> RolledKey:
    ad, second = member.split(":")
    return (None if ad == "b" else int(ad), int(second))


class LocalPendingKeys:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[int, set[RolledKey]] = defaultdict(set)

    def add(self, session_id: int, keys: set[RolledKey]) -> None:
        with self.lock:
            self.keys[session_id] |= keys

    def peek(self, session_id: int) -> set[RolledKey]:
        with self.lock:
            return set(self.keys.get(session_id, ()))

    def remove(self, session_id: int, keys: set[RolledKey]) -> None:
        with self.lock:
            left = self.keys.get(session_id, set()) - keys
            if left:
                self.keys[session_id] = left
            else:
                self.keys.pop(session_id, None)

    def sessions(self) -> list[int]:
        with self.lock:
            return list(self.keys)


class RedisPendingKeys:
    """One set per session, shared by every worker."""

    PREFIX = "analytics:rollups:pending:"

    def __init__(self, url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)

    def add(self, session_id: int, keys: set[RolledKey]) -> None:
        self.redis.sadd(f"{self.PREFIX}{session_id}", *(_encode(key) for key in keys))

    def peek(self, session_id: int) -> set[RolledKey]:
        return {_decode(member) for member in self.redis.smembers(f"{self.PREFIX}{session_id}")}

    def remove(self, session_id: int, keys: set[RolledKey]) -> None:
        if keys:
            self.redis.srem(f"{self.PREFIX}{session_id}", *(_encode(key) for key in keys))

    def sessions(self) -> list[int]:
        return [int(key.removeprefix(self.PREFIX)) for key in self.redis.scan_iter(f"{self.PREFIX}*")]


@cache
def _pending(redis_url: str) -> LocalPendingKeys | RedisPendingKeys:
    return RedisPendingKeys(redis_url) if redis_url else LocalPendingKeys()


def pending_keys() -> LocalPendingKeys | RedisPendingKeys:
    return _pending(getattr(settings, "REDIS_URL", "") or "")


def _window(session_id: int) -> str:
    return f"rollups-session-{session_id}"


def submit_refresh(session_id: int, keys: set[RolledKey]) -> None:
    """Called for each session of a stored batch (rollups.do_update_rollups)."""
    from research_portal.analytics.rollups import do_refresh_and_notify

    interval = rollup_interval_s()
    if interval <= 0:
        do_refresh_and_notify(session_id, keys)
        return
    store = windows()
    wait = store.try_open(_window(session_id), interval)
    pending = pending_keys()
    if wait is None:
        earlier = pending.peek(session_id)
        if do_refresh_and_notify(session_id, keys | earlier):
            pending.remove(session_id, earlier)
        return
    pending.add(session_id, keys)
    if store.try_mark_pending(_window(session_id)):
        schedule_trailing_refresh(session_id, wait)


def schedule_trailing_refresh(session_id: int, delay_s: float) -> None:
    if settings.CAPTURE_ANALYSIS_BACKEND == "celery":
        from research_portal.analytics.tasks import refresh_pending_rollups_task

        refresh_pending_rollups_task.apply_async((session_id,), countdown=delay_s)
    else:
        timer = threading.Timer(delay_s, _refresh_pending_in_thread, args=(session_id,))
        timer.daemon = True
        timer.start()


def _refresh_pending_in_thread(session_id: int) -> None:
    try:
        refresh_pending(session_id)
    finally:
        connections.close_all()


def refresh_pending(session_id: int) -> None:
    """The trailing edge: refresh whatever keys batches left pending since the last refresh."""
    from research_portal.analytics.rollups import do_refresh_and_notify

    store = windows()
    store.clear_pending(_window(session_id))
    keys = pending_keys().peek(session_id)
    if not keys:
        return
    store.try_open(_window(session_id), rollup_interval_s())
    if do_refresh_and_notify(session_id, keys):
        pending_keys().remove(session_id, keys)


def flush_all_pending() -> int:
    """Safety net (reconcile task): refresh every session with keys left pending, e.g. by a killed worker."""
    sessions = pending_keys().sessions()
    for session_id in sessions:
        refresh_pending(session_id)
    return len(sessions)
