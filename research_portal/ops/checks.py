"""Readiness checks behind /readyz: the database, Redis (when configured), the emotion model, and this
process's capture path (its frames keep leaving for the queue).

Every check is bounded, so a dead or hung dependency makes readyz answer 503 within about
READY_DEADLINE_S instead of hanging the probe: the database with a connect and a statement timeout, Redis
with socket timeouts and no retries, and all of them together with a deadline (the checks run in parallel).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import ConnectionHandler
from redis.backoff import NoBackoff
from redis.retry import Retry

from inference.pipeline import get_pipeline
from research_portal import deployment
from research_portal.capture.batching import all_batchers
from research_portal.capture.readings import check_model_labels

logger = logging.getLogger(__name__)

# libpq waits at least 2 s whatever connect_timeout says.
DATABASE_CONNECT_TIMEOUT_S = 2
DATABASE_STATEMENT_TIMEOUT_MS = 1000
# The probe's own bound, shorter than the frame path's (deployment.REDIS_TIMEOUT_S), and no retries: readyz
# must answer within READY_DEADLINE_S.
REDIS_TIMEOUT_S = 1.0
# Answer by then whatever a check is doing; an unfinished check counts as failed ("timed out").
READY_DEADLINE_S = 3.0

# Checks run here so that the deadline holds; a first model load that overruns it goes on in the background.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@dataclass
class CheckResult:
    ok: bool
    detail: str
    ms: float
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        data = asdict(self)
        return {**{key: data[key] for key in ("ok", "detail", "ms")}, **self.extra}


def probe_database() -> CheckResult:
    """A trivial query on a fresh connection to the default database, with short timeouts."""
    config = copy.deepcopy(connections[DEFAULT_DB_ALIAS].settings_dict)
    config.update(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)
    options = dict(config.get("OPTIONS") or {})
    vendor = connections[DEFAULT_DB_ALIAS].vendor
    if vendor == "postgresql":
        options["connect_timeout"] = DATABASE_CONNECT_TIMEOUT_S
        statement_timeout = f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
        options["options"] = f"{options.get('options', '')} {statement_timeout}".strip()
    elif vendor == "sqlite":
        options["timeout"] = 1
    config["OPTIONS"] = options
    # A private handler: its connection is not the app's and is closed right away.
    connection = ConnectionHandler({DEFAULT_DB_ALIAS: config})[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            (value,) = cursor.fetchone()
    finally:
        connection.close()
    if value != 1:
        raise RuntimeError(f"SELECT 1 returned {value!r}")
    return CheckResult(True, f"{vendor}: SELECT 1", 0.0)


def probe_redis() -> CheckResult:
    """PING the Redis of production mode; embedded mode has none (in-memory channel layer and cache)."""
    url = deployment.current().redis_url
    if not url:
        return CheckResult(True, "not configured", 0.0)
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()
    return CheckResult(True, "PONG", 0.0)


def probe_model() -> CheckResult:
    """The emotion model is loaded (get_pipeline() loads it once per process and caches it) and its labels
    fit FrameResult's columns (capture.readings)."""
    pipeline = get_pipeline()
    check_model_labels(pipeline.labels)
    return CheckResult(
        True,
        f"{pipeline.model_version} ({pipeline.detector_name}; labels {', '.join(pipeline.labels)})",
        0.0,
        {"model_version": pipeline.model_version, "labels": list(pipeline.labels)},
    )


def probe_capture() -> CheckResult:
    """Frames leave this web process for the queue: none has waited in its batcher longer than
    CAPTURE_STUCK_AFTER_S (a process stuck on a batch, or cut off from the database or the broker, fails
    this while its sockets stay open). Processes without capture sockets always pass."""
    batchers = all_batchers()
    age = max((batcher.oldest_frame_age_s() for batcher in batchers), default=0.0)
    buffered = sum(len(batcher.frames) for batcher in batchers)
    limit = settings.CAPTURE_STUCK_AFTER_S
    return CheckResult(
        age <= limit,
        f"oldest frame waiting {age:.1f} s (limit {limit:g} s), {buffered} buffered",
        0.0,
        {"oldest_frame_age_s": round(age, 3), "buffered_frames": buffered},
    )


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "database": probe_database,
    "redis": probe_redis,
    "model": probe_model,
    "capture": probe_capture,
}

_CREDENTIALS_IN_URL = re.compile(r"(\w+://)[^/@\s]*@")


def describe(error: BaseException) -> str:
    """A one-line reason for a failed check (no credentials from a URL)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return _CREDENTIALS_IN_URL.sub(r"\1***@", text)[:200]


def _timed(check: Callable[[], CheckResult]) -> CheckResult:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as error:
        result = CheckResult(False, describe(error), 0.0)
    result.ms = round((time.perf_counter() - started) * 1000, 2)
    return result


def run_checks(deadline_s: float = READY_DEADLINE_S) -> dict[str, CheckResult]:
    """Every check, in parallel, answered within `deadline_s`."""
    started = time.perf_counter()
    futures = {name: _executor.submit(_timed, check) for name, check in CHECKS.items()}
    results = {}
    for name, future in futures.items():
        remaining = max(0.0, deadline_s - (time.perf_counter() - started))
        try:
            results[name] = future.result(timeout=remaining)
        except FutureTimeout:
            elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
            results[name] = CheckResult(False, f"timed out after {deadline_s:g} s", elapsed_ms)
    return results
