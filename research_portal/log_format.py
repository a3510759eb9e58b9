"""Log formatting for every process (web, Celery worker, beat), selected by env `LOG_FORMAT` in settings.

`json` (default): one JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, every field
the caller passed with `extra=` (e.g. `session`, `seqs`, `frames`), and `exception` (the traceback) when there
is one. `plain`: `time level logger message key=value...` for a human at a terminal.

A participant's session token is their only credential (it is in their page URLs and socket path), so logs
carry `hash_token(token)` instead: pass `extra={"session": hash_token(token)}`. Both formatters also replace
any token found in a participant URL (`/p/<token>/...`, `/ws/capture/<token>/`) with `<h:HASH>`, which
covers what Django itself logs ("Not Found: /p/.../consent/", CSRF refusals).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from typing import Any

# Domain separation: the same token hashed for another purpose never gives these values.
TOKEN_HASH_PREFIX = "facecode-session-token:"
# Path segments that hold a participant token. `<` is not in the class, so redacting twice changes nothing.
_TOKEN_IN_PATH = re.compile(r"(/p/|/ws/capture/)([^/\s?#\"'<>\\]+)")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def hash_token(token: str) -> str:
    """What logs say instead of a session token: the first 12 hex characters (48 bits) of
    sha256(TOKEN_HASH_PREFIX + token). Stable across processes and releases, so the log lines of one session
    can be followed; a 256-bit token cannot be recovered from it."""
    return hashlib.sha256((TOKEN_HASH_PREFIX + token).encode()).hexdigest()[:12]


def redact_tokens(text: str) -> str:
    """`text` with every token in a participant URL replaced by `<h:hash_token(token)>`."""
    if "/p/" not in text and "/ws/capture/" not in text:
        return text
    return _TOKEN_IN_PATH.sub(lambda match: f"{match.group(1)}<h:{hash_token(match.group(2))}>", text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields the caller passed with `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as JSON data, every string redacted. A request (Django adds one to its own records) becomes
    its method and path; other objects become their str()."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_tokens(value)
    if depth > 4:
        return redact_tokens(str(value))
    if isinstance(value, dict):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, depth + 1) for item in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "method") and hasattr(value, "path") and hasattr(value, "META"):
        return {"method": value.method, "path": redact_tokens(value.path)}
    return redact_tokens(str(value))


def iso_utc(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry[key if key not in entry else f"extra_{key}"] = value
        if record.exc_info:
            # Cached like logging.Formatter does, so several handlers format a traceback once.
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(jsonable(entry), ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`logging.Formatter` plus the `extra=` fields as key=value, with tokens redacted."""

    def __init__(self, fmt: str | None = "%(asctime)s %(levelname)s %(name)s %(message)s", **kwargs) -> None:
        super().__init__(fmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if extras:
            pairs = " ".join(
                f"{key}={json.dumps(jsonable(value), ensure_ascii=False)}" for key, value in extras.items()
            )
            first, newline, rest = text.partition("\n")
            text = f"{first} {pairs}{newline}{rest}"
        return redact_tokens(text)
