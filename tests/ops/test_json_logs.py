"""Structured logs: JSON lines with the caller's fields, LOG_FORMAT, and no participant token, ever."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import subprocess
import sys

import pytest
from django.test import Client

from inference.resources import REPO_ROOT
from research_portal.log_format import JsonFormatter, PlainFormatter, hash_token

TOKEN = "Zq3xW9-kLp0_vR7sT2uY5aB8cD1eF4gH6iJ0kL3mN5o"  # the shape of secrets.token_urlsafe(32)


def record(message: str, *args, level: int = logging.INFO, exc_info=None, **extra) -> logging.LogRecord:
    log_record = logging.getLogger("research_portal.capture.consumers").makeRecord(
        "research_portal.capture.consumers", level, __file__, 1, message, args, exc_info, extra=extra
    )
    return log_record


def test_json_line_has_time_level_logger_message_and_extra_fields():
    line = JsonFormatter().format(
        record("frames queued: %d", 5, session=hash_token(TOKEN), seqs=[3, 4, 5], frames=5)
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "research_portal.capture.consumers"
    assert entry["message"] == "frames queued: 5"
    assert (entry["session"], entry["seqs"], entry["frames"]) == (hash_token(TOKEN), [3, 4, 5], 5)
    moment = dt.datetime.fromisoformat(entry["time"])
    assert moment.utcoffset() == dt.timedelta(0) and entry["time"].endswith("Z")
    assert abs((dt.datetime.now(dt.UTC) - moment).total_seconds()) < 60
    assert "exception" not in entry


def test_exception_text_is_included():
    try:
        raise ValueError("broker unreachable")
    except ValueError:
        line = JsonFormatter().format(
            record("could not queue a batch", level=logging.ERROR, exc_info=sys.exc_info())
        )
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: broker unreachable" in entry["exception"]


def test_objects_in_extra_fields_still_give_valid_json():
    entry = json.loads(
        JsonFormatter().format(
            record("x", when=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), what={1, 2}, obj=object())
        )
    )
    assert entry["when"] == "2026-01-02T00:00:00+00:00"
    assert sorted(entry["what"]) == [1, 2]
    assert entry["obj"].startswith("<object object")


def test_hash_token_is_stable_short_and_not_the_token():
    digest = hash_token(TOKEN)
    # Documented: the first 12 hex characters of sha256("facecode-session-token:" + token).
    assert digest == hashlib.sha256(f"facecode-session-token:{TOKEN}".encode()).hexdigest()[:12]
    assert digest == hash_token(TOKEN)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert digest not in TOKEN and TOKEN not in digest
    assert hash_token(TOKEN[:-1] + "p") != digest
    assert digest != hashlib.sha256(TOKEN.encode()).hexdigest()[:12]  # prefixed, not a bare sha256


@pytest.mark.parametrize("formatter", [JsonFormatter(), PlainFormatter()], ids=["json", "plain"])
def test_tokens_in_participant_urls_are_replaced_by_their_hash(formatter):
    for path in (f"/p/{TOKEN}/consent/", f"/ws/capture/{TOKEN}/", f"https://portal.example/p/{TOKEN}/end/"):
        try:
            raise RuntimeError(f"while serving {path}")
        except RuntimeError:
            text = formatter.format(
                record("Not Found: %s", path, level=logging.WARNING, exc_info=sys.exc_info(), url=path)
            )
        assert TOKEN not in text
        assert text.count(f"<h:{hash_token(TOKEN)}>") == 3  # message, extra field, exception text


# ---- wiring: settings.LOGGING and LOG_FORMAT -------------------------------------------------------------


def console_formatter() -> logging.Formatter:
    formatters = [
        handler.formatter
        for handler in logging.getLogger().handlers
        if isinstance(handler.formatter, JsonFormatter | PlainFormatter)
    ]
    assert len(formatters) == 1, logging.getLogger().handlers
    return formatters[0]


def test_settings_select_the_format_from_log_format():
    expected = PlainFormatter if os.environ.get("LOG_FORMAT", "json").lower() == "plain" else JsonFormatter
    assert type(console_formatter()) is expected


def log_in_subprocess(**env) -> subprocess.CompletedProcess:
    code = (
        "import django, logging; django.setup();"
        "logging.getLogger('research_portal.capture.consumers').warning("
        f"'capture refused: %s', 'unknown_session', extra={{'session': '{hash_token(TOKEN)}', 'frames': 2}})"
    )
    clean = {key: value for key, value in os.environ.items() if key != "LOG_FORMAT"}
    clean.update(env, DJANGO_SETTINGS_MODULE="research_portal.settings")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def test_json_is_the_default_and_plain_can_be_chosen():
    default = log_in_subprocess()
    assert default.returncode == 0, default.stderr
    entry = json.loads(default.stderr.strip().splitlines()[-1])
    assert entry["message"] == "capture refused: unknown_session"
    assert (entry["level"], entry["session"], entry["frames"]) == ("WARNING", hash_token(TOKEN), 2)

    plain = log_in_subprocess(LOG_FORMAT="plain")
    assert plain.returncode == 0, plain.stderr
    line = plain.stderr.strip().splitlines()[-1]
    assert " WARNING research_portal.capture.consumers capture refused: unknown_session" in line
    assert f'session="{hash_token(TOKEN)}"' in line and "frames=2" in line

    wrong = log_in_subprocess(LOG_FORMAT="xml")
    assert wrong.returncode != 0 and "LOG_FORMAT must be json or plain" in wrong.stderr


# ---- a real request: what Django logs about a participant URL carries no token ---------------------------


@pytest.fixture
def logged() -> io.StringIO:
    """What the configured console formatter writes for this test's WARNING and above."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(console_formatter())
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


@pytest.fixture
def participant_token(db) -> str:
    from research_portal.accounts.models import Organization
    from research_portal.capture.models import ParticipantSession
    from research_portal.studies.models import Study

    study = Study.objects.create(
        organization=Organization.objects.create(name="Acme Research"), name="Spring campaign", status="live"
    )
    return ParticipantSession.objects.create(study=study).token


def test_a_refused_participant_request_logs_the_token_hash_only(participant_token, logged):
    # The check page posts frames; without a CSRF token Django refuses and logs the path it refused.
    response = Client(enforce_csrf_checks=True).post(
        f"/p/{participant_token}/check/frame", data=b"x", content_type="image/jpeg"
    )
    assert response.status_code == 403
    # A guessed token: Django logs "Not Found: <path>".
    assert Client().get(f"/p/{TOKEN}/consent/").status_code == 404
    text = logged.getvalue()
    assert "Forbidden (CSRF" in text and "Not Found" in text, text
    assert participant_token not in text and TOKEN not in text
    assert hash_token(participant_token) in text and hash_token(TOKEN) in text


@pytest.mark.e2e
def test_the_server_process_output_never_shows_a_participant_token(postgres, redis_url, tmp_path):
    """Everything daphne (started as `make run` starts it) prints, for page loads and a capture socket."""
    import urllib.error
    import urllib.request

    from websockets.sync.client import connect

    from research_portal.accounts.models import Organization
    from research_portal.capture.models import ParticipantSession
    from research_portal.studies.models import Study
    from tests.support.processes import free_port
    from tests.support.services import service_env, start_daphne

    study = Study.objects.create(
        organization=Organization.objects.create(name="Acme Research"), name="Spring campaign", status="live"
    )
    token = ParticipantSession.objects.create(study=study).token
    port = free_port()
    server = start_daphne(service_env(postgres, redis_url), port, tmp_path / "daphne.log")
    try:
        for path in (f"/p/{token}/", f"/p/{token}/consent/", f"/p/{TOKEN}/consent/"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
            except urllib.error.HTTPError:
                pass  # 404s and redirects are logged too: that is the point
        origin = f"http://127.0.0.1:{port}"
        with connect(f"ws://127.0.0.1:{port}/ws/capture/{token}/", origin=origin, open_timeout=10) as socket:
            socket.recv(timeout=10)  # refused: the camera check has not been passed
    finally:
        server.stop()
    output = server.log()
    assert "Not Found" in output  # the server did log these requests
    assert token not in output and TOKEN not in output, output[-2000:]
