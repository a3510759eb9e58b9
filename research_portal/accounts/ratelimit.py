"""Cache-based rate limits (Redis cache when REDIS_URL is set, so every server process shares counters).

Limits are "count/seconds" strings in settings.RATE_LIMITS, e.g. {"entry": "30/60"}.

Two kinds:
- `rate_limited` (participant entry, check frames): every request counts, per client address.
- the sign-in limiter (`do_start_login_attempt`): the one limiter of every way to sign in (portal and admin
  sign-in forms, through `backends.ThrottledModelBackend`, and invitation links). It counts failed attempts
  per (username, client address), so one person mistyping cannot lock out their colleagues behind the same
  NAT, under a looser ceiling per client address; successful sign-ins never count.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

LOGIN_SCOPE = "login"  # failed attempts per (username, client address)
LOGIN_ADDRESS_SCOPE = "login_address"  # failed attempts per client address, any username


def parse_limit(limit: str) -> tuple[int, int]:
    count, seconds = limit.split("/")
    return int(count), int(seconds)


def client_ip(request: HttpRequest | None) -> str:
    """REMOTE_ADDR, or the address the trusted proxies in front of us saw (PORTAL_TRUSTED_PROXY_HOPS)."""
    if request is None:
        return ""
    hops = settings.PORTAL_TRUSTED_PROXY_HOPS
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if hops and forwarded:
        addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
        if len(addresses) >= hops:
            return addresses[-hops]
    return request.META.get("REMOTE_ADDR", "")


def _cache_key(scope: str, key: str) -> str:
    return f"ratelimit:{scope}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _increment(cache_key: str, seconds: int) -> int:
    """Add one to a fixed-window counter (the window starts with its first count); the new count."""
    if cache.add(cache_key, 1, timeout=seconds):
        return 1
    try:
        return cache.incr(cache_key)
    except ValueError:  # expired between add and incr
        cache.add(cache_key, 1, timeout=seconds)
        return 1


def _decrement(cache_key: str) -> None:
    try:
        cache.decr(cache_key)
    except ValueError:  # the window ended meanwhile: nothing left to take back
        pass


def hit(scope: str, key: str) -> bool:
    """Count one request for (scope, key); False once the scope's limit is exceeded in its window."""
    count, seconds = parse_limit(settings.RATE_LIMITS[scope])
    return _increment(_cache_key(scope, key), seconds) <= count


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


# ---- sign-in attempts ------------------------------------------------------------------------------------


class LoginThrottled(Exception):
    """Too many failed sign-in attempts; answered with 429 by accounts.middleware.LoginThrottleMiddleware,
    whichever view (portal, admin, invitation) was signing someone in."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Too many failed sign-in attempts.")
        self.retry_after_s = retry_after_s


@dataclass
class LoginAttempt:
    """One counted attempt. `do_succeeded` takes it back: only failures count against the limits."""

    cache_keys: list[str] = field(default_factory=list)

    def do_succeeded(self) -> None:
        for cache_key in self.cache_keys:
            _decrement(cache_key)
        self.cache_keys = []


def login_identity(username: str) -> str:
    """The username as counted: case and Unicode variants of one name share a counter, so that "Ada" and
    "ada" (or a fullwidth "ａｄａ") do not each get their own allowance."""
    return unicodedata.normalize("NFKC", username or "").strip().casefold()


def do_start_login_attempt(request: HttpRequest | None, identity: str) -> LoginAttempt:
    """Count an attempt to sign in as `identity` (a username, or "invitation:<token hash>") from the request's
    client address, before any password or token is checked; raise LoginThrottled when the (identity,
    address) pair or the address is over its limit. The count is taken first and given back when refused,
    so concurrent attempts cannot all slip under the limit; call `do_succeeded()` after a success.
    Without a request (code signing someone in outside a web request) the address is empty: still limited."""
    address = client_ip(request)
    counted: list[str] = []
    for scope, key in ((LOGIN_SCOPE, f"{address}|{identity}"), (LOGIN_ADDRESS_SCOPE, address)):
        count, seconds = parse_limit(settings.RATE_LIMITS[scope])
        cache_key = _cache_key(scope, key)
        counted.append(cache_key)
        if _increment(cache_key, seconds) > count:
            for taken in counted:  # a refused attempt checked no password: it is not a failure
                _decrement(taken)
            raise LoginThrottled(retry_after_s=seconds)
    return LoginAttempt(counted)
