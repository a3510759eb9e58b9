"""Cache-based rate limits (Redis cache when REDIS_URL is set, so every server process shares counters).

Limits are "count/seconds" strings in settings.RATE_LIMITS, e.g. {"login": "10/300"}.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def parse_limit(limit: str) -> tuple[int, int]:
    count, seconds = limit.split("/")
    return int(count), int(seconds)


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or the address the trusted proxies in front of us saw (PORTAL_TRUSTED_PROXY_HOPS)."""
    hops = settings.PORTAL_TRUSTED_PROXY_HOPS
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if hops and forwarded:
        addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
        if len(addresses) >= hops:
            return addresses[-hops]
    return request.META.get("REMOTE_ADDR", "")


def hit(scope: str, key: str) -> bool:
    """Count one request for (scope, key); False once the scope's limit is exceeded in its window."""
    count, seconds = parse_limit(settings.RATE_LIMITS[scope])
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    cache_key = f"ratelimit:{scope}:{digest}"
    if cache.add(cache_key, 1, timeout=seconds):
        return True
    try:
        current = cache.incr(cache_key)
    except ValueError:  # expired between add and incr
        cache.add(cache_key, 1, timeout=seconds)
        return True
    return current <= count


def rate_limited(
    scope: str,
    key: Callable[[HttpRequest], str] | None = None,
    methods: tuple[str, ...] = ("GET", "POST"),
    response: Callable[[HttpRequest], HttpResponse] | None = None,
) -> Callable:
    """Decorator: answer 429 once a client exceeds settings.RATE_LIMITS[scope]."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method in methods:
                identity = client_ip(request) + "|" + (key(request) if key else "")
                if not hit(scope, identity):
                    if response is not None:
                        return response(request)
                    return HttpResponse(
                        "Too many requests. Please wait a few minutes and try again.",
                        status=429,
                        content_type="text/plain; charset=utf-8",
                    )
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
