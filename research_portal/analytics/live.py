"""Live dashboards: after rollups change, tell the Channels groups of the study and its ads, at most about
once per second per group (not once per frame or batch).

The throttle is leading + trailing edge: the first change in a quiet group is sent at once; further changes
inside the interval are folded into one message sent when it ends, so the last change is never lost. With
Redis configured the window is shared by every worker process (SET NX PX); otherwise it is per process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import cache

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

EVENT_TYPE = "analytics.changed"  # handled by LiveDashboardConsumer.analytics_changed


def live_interval_s() -> float:
    return float(getattr(settings, "ANALYTICS_LIVE_INTERVAL_S", 1.0))


def study_group(study_id: int) -> str:
    return f"analytics-study-{study_id}"


def ad_group(ad_id: int) -> str:
    return f"analytics-ad-{ad_id}"


class LocalWindows:
    """Throttle windows of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open_until: dict[str, float] = {}
        self.pending: set[str] = set()

    def try_open(self, group: str, interval_s: float) -> float | None:
        """Open the group's window and return None (send now), or return the seconds until it ends."""
        with self.lock:
            now = time.monotonic()
            until = self.open_until.get(group, 0.0)
            if until <= now:
                self.open_until[group] = now + interval_s
                return None
            return until - now

    def try_mark_pending(self, group: str) -> bool:
        with self.lock:
            if group in self.pending:
                return False
            self.pending.add(group)
            return True

    def clear_pending(self, group: str) -> None:
        with self.lock:
            self.pending.discard(group)


class RedisWindows:
    """Throttle windows shared by every process that uses the same Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url)

    def try_open(self, group: str, interval_s: float) -> float | None:
        key = f"analytics:live:window:{group}"
        if self.redis.set(key, 1, nx=True, px=max(1, int(interval_s * 1000))):
            return None
        remaining_ms = self.redis.pttl(key)
        return max(remaining_ms, 1) / 1000 if remaining_ms and remaining_ms > 0 else 0.001

    def try_mark_pending(self, group: str) -> bool:
        # Expires on its own, so a process that died before its trailing send blocks nothing for long.
        return bool(self.redis.set(f"analytics:live:pending:{group}", 1, nx=True, px=10_000))

    def clear_pending(self, group: str) -> None:
        self.redis.delete(f"analytics:live:pending:{group}")


@cache
def _windows(redis_url: str) -> LocalWindows | RedisWindows:
    return RedisWindows(redis_url) if redis_url else LocalWindows()


def windows() -> LocalWindows | RedisWindows:
    return _windows(getattr(settings, "REDIS_URL", "") or "")


_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by dashboard sockets: the event loop of the ASGI server in this process."""
    global _server_loop
    _server_loop = loop


def send_event(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _server_loop
    if loop is not None and loop.is_running():
        # In the server process (embedded mode's analysis threads), hand the send to the server's loop: the
        # in-memory layer's queues belong to it and are not thread-safe.
        asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop).result(timeout=10)
    elif _loop_running_in_this_thread():
        # Sync code called from inside an event loop's thread (e.g. a test driving a browser) cannot block on
        # the loop; send from a helper thread instead.
        threading.Thread(target=async_to_sync(layer.group_send), args=(group, message), daemon=True).start()
    else:  # a Celery worker: no server loop here, the Redis layer connects from this thread
        async_to_sync(layer.group_send)(group, message)


def _loop_running_in_this_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class GroupThrottle:
    def __init__(
        self, send: Callable[[str, dict], None] = send_event, store: Callable[[], object] = windows
    ) -> None:
        self.send = send
        self.store = store

    def submit(self, group: str, message: dict) -> None:
        interval = live_interval_s()
        store = self.store()
        wait = store.try_open(group, interval)
        if wait is None:
            self._send(group, message)
            return
        if store.try_mark_pending(group):
            timer = threading.Timer(wait, self._trailing, args=(group, message, interval))
            timer.daemon = True
            timer.start()

    def _trailing(self, group: str, message: dict, interval: float) -> None:
        store = self.store()
        store.clear_pending(group)
        wait = store.try_open(group, interval)
        if wait is None:
            self._send(group, message)
        elif store.try_mark_pending(group):  # another process opened a window meanwhile: follow it
            timer = threading.Timer(wait, self._trailing, args=(group, message, interval))
            timer.daemon = True
            timer.start()

    def _send(self, group: str, message: dict) -> None:
        try:
            self.send(group, {**message, "sent_at": time.time()})
        except Exception:
            # A live push is a convenience; the dashboard is still right on the next load or push.
            logger.exception("live push to %s failed", group)


throttle = GroupThrottle()


def notify_rollups_changed(study_id: int, ad_ids: Iterable[int]) -> None:
    """After the current transaction commits, tell the study's and the ads' live dashboards (throttled)."""
    ad_ids = sorted(set(ad_ids))

    def send() -> None:
        throttle.submit(study_group(study_id), {"type": EVENT_TYPE, "study": study_id})
        for ad_id in ad_ids:
            throttle.submit(ad_group(ad_id), {"type": EVENT_TYPE, "study": study_id, "ad": ad_id})

    transaction.on_commit(send)
