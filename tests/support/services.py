"""The real services integration tests talk to: availability checks (outside CI a missing service or file
skips the tests that need it; under CI=true it fails them), and the ASGI server and Celery worker processes
started on the test's database and Redis."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.support.processes import Service, StackError, accepting, start_service, web_command

IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(message: str) -> None:
    """A missing service or file is a failure under CI, never a skip."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        skip_or_fail(f"{what} not found at {path} (set PORTAL_SHARED_DIR / PORTAL_MODEL_PATH)")
    return path


def reachable_redis_url() -> str:
    """REDIS_URL, checked to answer (skip, or fail under CI, when it is missing or away)."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        skip_or_fail("Redis is required: run via `make test` or set REDIS_URL=redis://...")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        skip_or_fail(f"Redis at {url} is not reachable: {error}")
    return url


def service_env(database: dict, redis_url: str) -> dict[str, str]:
    """Environment for a server or worker process that must see this test's database and media."""
    user = database["USER"] or "postgres"
    password = f":{database['PASSWORD']}" if database["PASSWORD"] else ""
    host = database["HOST"] or "127.0.0.1"
    port = database["PORT"] or "5432"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{user}{password}@{host}:{port}/{database['NAME']}",
        REDIS_URL=redis_url,
        PORTAL_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        PYTHONUNBUFFERED="1",
        DATABASE_CONN_MAX_AGE="0",
        # Not capture.js's built-in 5 s, so browser tests see the server's value arrive in `hello`.
        CAPTURE_RESEND_AFTER_S="6",
    )
    return env


def start_process(
    command: list[str], env: dict[str, str], ready, log_path: Path, timeout_s: float = 60
) -> Service:
    """Start a service process logging to `log_path`; return once `ready(service)` is true."""
    try:
        return start_service(
            log_path.stem, command, env, log_path.parent, ready, timeout_s=timeout_s, die_with_parent=False
        )
    except StackError as error:
        pytest.fail(str(error))


def start_celery_worker(env: dict[str, str], log_path: Path, beat: bool = False) -> Service:
    """`celery -A research_portal worker` (solo, one process) on a flushed Redis; returns once it is ready.
    `beat`: with the beat schedule (settings.CELERY_BEAT_SCHEDULE), its state in a file beside the log."""
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    command = [
        str(Path(sys.executable).parent / "celery"),
        "-A",
        "research_portal",
        "worker",
        "--loglevel=info",
        "--concurrency=1",
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        command += ["--beat", f"--schedule={log_path.with_suffix('.beat-schedule')}"]
    return start_process(command, env, lambda s: " ready." in s.log(), log_path, timeout_s=90)


def start_daphne(env: dict[str, str], port: int, log_path: Path) -> Service:
    """The ASGI server as `make run` starts it (daphne -v 0: its access log would print tokens in URLs)."""
    return start_process(web_command("daphne", port), env, accepting(port), log_path)
