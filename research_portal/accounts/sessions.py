"""Who a session key belongs to, decided the way Django decides it for a page request.

Long-lived sockets and the request-body gate (research_portal/ops/body_limits.py) hold a session key rather
than a request. `user_for_session_key` re-reads the session and the user now: a signed-out or expired
session, a changed password (session hash), a deactivated or deleted user all give AnonymousUser.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser


def user_for_session_key(session_key: str | None):
    """The signed-in, active user of the session, or AnonymousUser."""
    if not session_key or len(session_key) > 64 or not session_key.isalnum():
        return AnonymousUser()  # not a key Django issues (32 lower-case letters and digits)
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # django.contrib.auth.get_user needs only `.session`; it verifies the backend, the user (active) and the
    # session's password hash exactly as AuthenticationMiddleware does.
    return get_user(SimpleNamespace(session=store))
