"""Django's database sessions, looked up only for keys of the form Django issues (docs/security.md, L11).

A session cookie is input. Django looks any key of 8 or more characters up in the database, and a quoted
cookie value may spell NUL (`"\\000..."`), which Postgres refuses in a query: a 500 on every page that reads
the session, and in the body-size gate and the sockets' authentication alike. Django's keys are 32 lower-case
letters and digits (at most 40 fit the column); any other key is no session, decided before a lookup, so the
visitor is simply signed out. SESSION_ENGINE names this module.
"""

from __future__ import annotations

from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

MAX_KEY_CHARS = 40  # django_session.session_key


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key) -> bool:
        return bool(key) and 8 <= len(key) <= MAX_KEY_CHARS and all(char in VALID_KEY_CHARS for char in key)
