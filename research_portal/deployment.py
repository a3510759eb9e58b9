"""The deployment mode, decided once per process, and the Redis clients of the production mode.

Embedded (REDIS_URL unset): one process does everything. A thread pool of the web process analyses the frames,
and the state the frame path and the dashboards keep lives in that process's memory.
Production (REDIS_URL set): Celery worker processes analyse the frames, and that state lives in Redis, shared
by every web and worker process.

This module is the only reader of REDIS_URL besides settings.py (which builds the channel layer, the cache
and the Celery broker from it). Everything else that differs between the modes is a ModeDependent pair, an
embedded and a production maker, declared where it is used; this module makes the one of the current mode:
- flow counters and worker heartbeats    capture/flow.py        flow_counters
- the analysis backend and its queue     capture/queueing.py    analysis_backend (thread pool, or Celery
                                                                 with the frames in capture/batch_store.py)
- the ack inboxes of web processes       capture/acks.py        ack_inbox
- the rollup journal                     analytics/debounce.py  rollup_journal
- live push windows                      analytics/live.py      live_windows
- where a session's rollups are re-filed analytics/tasks.py     session_refresher (inline, or a worker)
Code that only needs to know the mode asks current().mode (ops/periodic.py). Tests switch the mode with the
`deployment_mode` fixture (tests/conftest.py), through switch_to().
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Generic, TypeVar

import redis
import redis.asyncio
from django.conf import settings

T = TypeVar("T")

# Every Redis client of ours (not the channel layer's: settings.CHANNEL_LAYERS) waits this long to connect and
# for each reply. Our commands take well under a millisecond and an ack inbox's blocking pop returns within
# acks.POP_TIMEOUT_S, so a Redis that has not answered by then is away or hung, and the caller's failure path
# runs (frames kept and retried, flow control holding its rate, rollup keys left journaled) instead of a hang.
# It is redis-py's own default, which most of these clients used already.
REDIS_TIMEOUT_S = 5.0


class Mode(StrEnum):
    EMBEDDED = "embedded"
    PRODUCTION = "production"


@dataclass(frozen=True)
class Deployment:
    mode: Mode
    redis_url: str = ""  # production only

    @classmethod
    def from_settings(cls) -> Deployment:
        url = settings.REDIS_URL
        return cls(Mode.PRODUCTION, url) if url else cls(Mode.EMBEDDED)


_lock = threading.Lock()
_current: Deployment | None = None
# Counts switches (tests): a ModeDependent object made before the latest one is made again.
_generation = 0


def current() -> Deployment:
    """This process's deployment, decided from the settings on first use."""
    global _current
    deployment = _current
    if deployment is None:
        with _lock:
            if _current is None:
                _current = Deployment.from_settings()
            deployment = _current
    return deployment


def switch_to(deployment: Deployment | None) -> None:
    """Run this process as `deployment` from now on (None: as its settings say); every ModeDependent object
    is made again on its next use. For tests: a real process keeps the mode it started with."""
    global _current, _generation
    with _lock:
        _current = deployment
        _generation += 1


def redis_client() -> redis.Redis:
    """Production: this process's client for REDIS_URL (pooled and thread-safe; it reconnects after a fork).
    RuntimeError in embedded mode, which has no Redis."""
    return _sync_client(_production_redis_url())


def async_redis_client() -> redis.asyncio.Redis:
    """Production: a new asyncio client for REDIS_URL, for the running event loop (its connections belong to
    that loop); close it with `aclose()`."""
    return redis.asyncio.Redis.from_url(
        _production_redis_url(), socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def _production_redis_url() -> str:
    deployment = current()
    if deployment.mode is not Mode.PRODUCTION:
        raise RuntimeError("embedded mode has no Redis")
    return deployment.redis_url


@cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)


class ModeDependent(Generic[T]):
    """Something that differs between the modes: calling it gives this process's one object, made on first
    use by `embedded()`, or by `production(redis_client())`."""

    def __init__(self, embedded: Callable[[], T], production: Callable[[redis.Redis], T]) -> None:
        self.embedded = embedded
        self.production = production
        self._lock = threading.Lock()
        self._made: tuple[int, T] | None = None  # (generation, object)

    def __call__(self) -> T:
        made = self._made
        if made is not None and made[0] == _generation:
            return made[1]
        with self._lock:
            generation = _generation
            if self._made is None or self._made[0] != generation:
                if current().mode is Mode.PRODUCTION:
                    made_now = self.production(redis_client())
                else:
                    made_now = self.embedded()
                self._made = (generation, made_now)
            return self._made[1]
