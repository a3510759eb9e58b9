"""The authentication backend: Django's, with the sign-in limiter in front of the password check.

Every way to sign in with a password (the portal's /accounts/login/, Django admin's /admin/login/, any
future form that calls `django.contrib.auth.authenticate`) passes through here, so none can bypass the
limit. Over the limit it raises LoginThrottled, which accounts.middleware turns into a 429 page.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from research_portal.accounts.ratelimit import do_start_login_attempt, login_identity


class ThrottledModelBackend(ModelBackend):
    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs
    ):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None  # nothing to check, nothing to count
        attempt = do_start_login_attempt(request, login_identity(username))
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            attempt.do_succeeded()
        return user


BACKEND_PATH = f"{ThrottledModelBackend.__module__}.{ThrottledModelBackend.__qualname__}"
