"""Live dashboards: after rollups change, tell the Channels groups of the study and its ads, at most about
once per second per group (not once per frame or batch).

The throttle is leading + trailing edge: the first change in a quiet group is sent at once; further changes
inside the interval are folded into one message sent when it ends, so the last change is never lost. In
production the window is shared by every worker process through Redis (SET NX PX); embedded, it is the
process's own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import redis
from django.conf import settings
from django.db import transaction

from research_portal.deployment import ModeDependent
from research_portal.events import send_group_event

logger = logging.getLogger(__name__)

EVENT_TYPE = "analytics.changed"  # handled by LiveDashboardConsumer.analytics_changed
LIVE_EVENT_TYPE = "analytics.live"  # handled by LiveDashboardConsumer.analytics_live (provisional.py)


def live_interval_s() -> float:
    return float(settings.ANALYTICS_LIVE_INTERVAL_S)


def study_group(study_id: int) -> str:
    return f"analytics-study-{study_id}"


def ad_group(ad_id: int) -> str:
    return f"analytics-ad-{ad_id}"


class LocalWindows:
    """Embedded mode: throttle windows of this process."""

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
    """Production: throttle windows shared by every process that uses the same Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

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


live_windows: ModeDependent[LocalWindows | RedisWindows] = ModeDependent(
    embedded=LocalWindows, production=RedisWindows
)


class GroupThrottle:
    def __init__(
        self,
        send: Callable[[str, dict], None] = send_group_event,
        store: Callable[[], LocalWindows | RedisWindows] = live_windows,
    ) -> None:
        self.send = send
        self.store = store

    def submit(self, group: str, message: dict, window: str | None = None) -> None:
        """Send `message` to `group`, at most once per interval per `window` (default: the group's own; a
        different kind of message to the same group throttles in a window of its own, or it would be folded
        into the other kind's trailing message and lost)."""
        window = window or group
        interval = live_interval_s()
        store = self.store()
        wait = store.try_open(window, interval)
        if wait is None:
            self._send(group, message)
            return
        if store.try_mark_pending(window):
            timer = threading.Timer(wait, self._trailing, args=(group, message, interval, window))
            timer.daemon = True
            timer.start()

    def _trailing(self, group: str, message: dict, interval: float, window: str) -> None:
        store = self.store()
        store.clear_pending(window)
        wait = store.try_open(window, interval)
        if wait is None:
            self._send(group, message)
        elif store.try_mark_pending(window):  # another process opened a window meanwhile: follow it
            timer = threading.Timer(wait, self._trailing, args=(group, message, interval, window))
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


def notify_frames_stored(ad_ids: Iterable[int]) -> None:
    """Frames of these ads were stored (committed) and tallied (provisional.py): tell their live dashboards,
    throttled per ad in a window apart from the rollup pushes'."""
    for ad_id in sorted(set(ad_ids)):
        group = ad_group(ad_id)
        throttle.submit(group, {"type": LIVE_EVENT_TYPE, "ad": ad_id}, window=f"{group}:live")
