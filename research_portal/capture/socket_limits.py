"""What one capture socket may do (frames and page events per second, refusals before it counts as a flood),
and how often a token or a client address may connect. Each limit is here once; docs/architecture.md, "Wire
protocol", lists them with their settings."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache as django_cache

from research_portal.accounts.ratelimit import parse_limit
from research_portal.capture.wire import CaptureRefused, FrameRejected

logger = logging.getLogger(__name__)

RATE_LIMITED = "rate_limited"
# Refusals with seq null (rate_limited) a socket may collect before it counts as a flood (closed with
# 4008), refilled at this rate: a reconnect's resend burst from an older capture.js stays below it.
REFUSAL_BUDGET = 2000
REFUSALS_PER_S = 10.0
# Frames refused for good (bad values) a socket may collect before it is closed with 4008.
MAX_REJECTIONS = 50
# Close code of a connect beyond the limits (check_connect_rate).
CLOSE_TOO_MANY_CONNECTS = 4029


class TokenBucket:
    """`rate` per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def allow(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def set_rate(self, rate: float) -> None:
        self._refill()  # what was earned at the old rate stays earned
        self.rate = float(rate)


@dataclass
class SocketLimits:
    """What one capture socket may still do. Frames and page events are limited per socket, so a flooding
    client is refused (rate_limited, seq null: keep it, resend later) while every other socket goes on; a
    socket refused too often, or sending too many bad frames, is a flood (closed with 4008)."""

    fps: float
    frames: TokenBucket
    events: TokenBucket
    refusals: TokenBucket = field(default_factory=lambda: TokenBucket(REFUSALS_PER_S, REFUSAL_BUDGET))
    rejections: int = 0

    @classmethod
    def for_socket(cls, fps: float, flow_scale: float = 1.0) -> SocketLimits:
        frame_rate = settings.CAPTURE_FRAME_RATE_FACTOR * fps * flow_scale
        return cls(
            fps=fps,
            frames=TokenBucket(frame_rate, settings.CAPTURE_FRAME_BURST),
            events=TokenBucket(settings.CAPTURE_EVENTS_PER_S, settings.CAPTURE_EVENT_BURST),
        )

    def set_flow_scale(self, scale: float) -> None:
        """Flow control lowered (or restored) the capture rate: the frames allowed follow it."""
        self.frames.set_rate(settings.CAPTURE_FRAME_RATE_FACTOR * self.fps * scale)

    def check_frame_rate(self) -> None:
        if not self.frames.allow():
            raise FrameRejected(RATE_LIMITED, "Too many frames; slow down.")

    def check_event_rate(self) -> None:
        if not self.events.allow():
            raise FrameRejected(RATE_LIMITED, "Too many page events; this one is not recorded.")

    def is_flood_after(self, refused: FrameRejected) -> bool:
        """Count a refusal; True once the socket should be closed as a flood."""
        if refused.seq is None and refused.code == RATE_LIMITED:
            return not self.refusals.allow()
        self.rejections += 1
        return self.rejections > MAX_REJECTIONS


def check_connect_rate(token: str, client_address: str) -> None:
    """Refuse (4029) a socket connect beyond CAPTURE_CONNECTS_PER_IP for its client address or
    CAPTURE_CONNECTS_PER_TOKEN for its token. Every attempt counts, refused ones too. With the cache away
    (Redis down) connects are let through: capture must not stop for a counter."""
    limits = [("token", token, settings.CAPTURE_CONNECTS_PER_TOKEN)]
    if client_address:
        limits.insert(0, ("ip", client_address, settings.CAPTURE_CONNECTS_PER_IP))
    for kind, identity, limit in limits:
        count, seconds = parse_limit(limit)
        try:
            allowed = _count_connect(f"capture:connects:{kind}:{_digest(identity)}", count, seconds)
        except Exception:  # noqa: BLE001 - the cache is advisory here
            logger.warning("connect rate not counted (cache away); letting the socket in", exc_info=True)
            return
        if not allowed:
            raise CaptureRefused(
                CLOSE_TOO_MANY_CONNECTS,
                "too_many_connections",
                f"Too many connections for this {'session' if kind == 'token' else 'address'}; "
                "wait a minute and try again.",
            )


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _count_connect(key: str, count: int, seconds: int) -> bool:
    """Fixed window, as accounts.ratelimit.hit: False once `count` is exceeded within `seconds`."""
    if django_cache.add(key, 1, timeout=seconds):
        return True
    try:
        return django_cache.incr(key) <= count
    except ValueError:  # expired between add and incr
        django_cache.add(key, 1, timeout=seconds)
        return True
