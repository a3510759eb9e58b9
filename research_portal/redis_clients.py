"""One synchronous Redis client per URL and process, for the short commands of the capture path."""

from __future__ import annotations

from functools import cache


@cache
def redis_client(url: str):
    """Pooled and thread-safe; bounded timeouts, so that a Redis outage raises instead of hanging."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
