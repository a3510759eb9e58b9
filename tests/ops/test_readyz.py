"""GET /readyz: database, Redis (when configured) and the emotion model; 503 fast when one is down.

Failures are real: closed ports, a server that accepts and never answers, a missing model file, and a
daphne server started against a database that is not there. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.test import override_settings

from inference.pipeline import get_pipeline, reset_pipeline
from research_portal.ops.checks import DATABASE_CONNECT_TIMEOUT_S, READY_DEADLINE_S, REDIS_TIMEOUT_S
from tests.model_files import build_contract_model
from tests.support.processes import free_port
from tests.support.services import start_daphne

CHECKS = {"database", "redis", "model", "capture"}


def assert_check_shape(body: dict) -> None:
    assert set(body) == CHECKS
    for name, check in body.items():
        assert isinstance(check["ok"], bool), name
        assert isinstance(check["detail"], str) and check["detail"], name
        assert isinstance(check["ms"], float) and check["ms"] >= 0, name


def get_readyz(client) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert_check_shape(body)
    return response.status_code, body, elapsed


def test_ready_when_everything_answers(client, db):
    status, body, _ = get_readyz(client)
    assert status == 200, body
    assert all(check["ok"] for check in body.values())
    assert body["model"]["model_version"] == get_pipeline().model_version
    assert body["model"]["model_version"] in body["model"]["detail"]
    from django.db import connection

    assert body["database"]["detail"].startswith(connection.vendor)
    if os.environ.get("REDIS_URL"):
        assert body["redis"]["detail"] == "PONG"
    else:
        assert body["redis"]["detail"] == "not configured"


def test_readyz_needs_no_sign_in_and_is_not_redirected_to_https(client, db):
    with override_settings(SECURE_SSL_REDIRECT=True):
        assert client.get("/studies/").status_code == 301
        assert client.get("/readyz").status_code == 200
    assert client.post("/readyz").status_code == 405


def test_configured_redis_is_pinged(client, db, redis_url, deployment_mode):
    deployment_mode.production(redis_url)
    status, body, _ = get_readyz(client)
    assert status == 200, body
    assert body["redis"] == {"ok": True, "detail": "PONG", "ms": body["redis"]["ms"]}


def test_redis_refusing_connections_makes_readyz_503(client, db, deployment_mode):
    deployment_mode.production(f"redis://127.0.0.1:{free_port()}/0")
    status, body, elapsed = get_readyz(client)
    assert status == 503
    assert body["redis"]["ok"] is False and "ConnectionError" in body["redis"]["detail"]
    assert body["database"]["ok"] and body["model"]["ok"]
    assert elapsed < REDIS_TIMEOUT_S + 1


def test_redis_that_never_answers_times_out_instead_of_hanging(client, db, silent_port, deployment_mode):
    deployment_mode.production(f"redis://127.0.0.1:{silent_port}/0")
    status, body, elapsed = get_readyz(client)
    assert status == 503
    assert body["redis"]["ok"] is False and "Timeout" in body["redis"]["detail"]
    assert body["database"]["ok"] and body["model"]["ok"]
    # One socket timeout, no retries.
    assert REDIS_TIMEOUT_S * 0.9 <= elapsed < REDIS_TIMEOUT_S + 1


@pytest.fixture
def missing_model(monkeypatch, tmp_path):
    """This process's pipeline rebuilt from a model path with no file behind it (restored afterwards)."""
    monkeypatch.setenv("PORTAL_MODEL_PATH", str(tmp_path / "no-such-model.onnx"))
    reset_pipeline()
    yield
    monkeypatch.undo()
    reset_pipeline()


def test_missing_model_makes_readyz_503(client, db, missing_model):
    status, body, _ = get_readyz(client)
    assert status == 503
    assert body["model"]["ok"] is False and "model_version" not in body["model"]
    assert body["database"]["ok"] and body["redis"]["ok"]


@pytest.fixture
def model_with_a_label_without_column(monkeypatch, tmp_path):
    """This process's pipeline on a model reading a label FrameResult has no column for."""
    labels = ["neutral", "happy", "confused"]
    path = build_contract_model(
        tmp_path / "confused.onnx", labels, [0.0] * 3, [0.0] * 3, version="confused-1"
    )
    monkeypatch.setenv("PORTAL_MODEL_PATH", str(path))
    reset_pipeline()
    yield
    monkeypatch.undo()
    reset_pipeline()


def test_a_model_whose_labels_cannot_be_stored_makes_readyz_503(
    client, db, model_with_a_label_without_column
):
    status, body, _ = get_readyz(client)
    assert status == 503
    assert body["model"]["ok"] is False and "confused" in body["model"]["detail"]
    assert body["database"]["ok"] and body["redis"]["ok"]


def test_ready_reports_the_models_labels(client, db):
    status, body, _ = get_readyz(client)
    assert status == 200
    assert body["model"]["labels"] == list(get_pipeline().labels)


# ---- the database, for real: a daphne server whose DATABASE_URL leads nowhere ------------------------------


def fetch(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def server_env(tmp_path: Path, database_port: int) -> dict[str, str]:
    """The production settings path with a database that is not there, and no Redis."""
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{database_port}/portal",
        PORTAL_VAR_DIR=str(tmp_path / "var"),
        PORTAL_MEDIA_ROOT=str(tmp_path / "media"),
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.parametrize("database", ["refusing", "silent"])
def test_unreachable_database_makes_a_real_server_answer_503_quickly(tmp_path, database, request):
    database_port = free_port() if database == "refusing" else request.getfixturevalue("silent_port")
    port = free_port()
    server = start_daphne(server_env(tmp_path, database_port), port, tmp_path / "daphne.log")
    try:
        base = f"http://127.0.0.1:{port}"
        assert fetch(f"{base}/healthz") == (200, b'{"status": "ok"}')  # alive, though not ready
        started = time.monotonic()
        status, raw = fetch(f"{base}/readyz")
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    body = json.loads(raw)
    assert_check_shape(body)
    assert status == 503, body
    assert body["database"]["ok"] is False, body
    assert body["redis"] == {"ok": True, "detail": "not configured", "ms": body["redis"]["ms"]}
    assert body["model"]["ok"] is True and body["capture"]["ok"] is True
    # libpq's connect timeout, not the OS's (minutes for a server that never answers).
    limit = (DATABASE_CONNECT_TIMEOUT_S if database == "silent" else 0) + 1.5
    assert elapsed < min(limit, READY_DEADLINE_S + 1), (elapsed, body)
    # The server logged why, as a JSON line.
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    not_ready = [line for line in lines if line["logger"] == "research_portal.ops.views"]
    assert not_ready and not_ready[-1]["level"] == "WARNING", server.log()[-3000:]
    assert not_ready[-1]["message"] == "not ready: database"
    assert not_ready[-1]["checks"]["database"]["ok"] is False
