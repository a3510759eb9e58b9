"""GET /metrics: the capture path's load for operators (staff) and scrapers (bearer token)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model

from research_portal.accounts.models import Organization, Role
from research_portal.capture import flow
from tests.accounts.helpers import member

METRICS_TOKEN = "scrape-me-7c1f"


@pytest.fixture
def redis_counters(redis_flow, settings):
    settings.PORTAL_METRICS_TOKEN = METRICS_TOKEN
    return redis_flow


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(username="operator", password="x" * 20, is_staff=True)


def test_anonymous_and_analysts_are_refused(client, db, settings):
    settings.PORTAL_METRICS_TOKEN = METRICS_TOKEN
    assert client.get("/metrics").status_code == 403
    client.force_login(member(Organization.objects.create(name="Acme Research"), Role.ADMIN))
    assert client.get("/metrics").status_code == 403  # an organisation admin is not an operator
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_no_token_configured_means_no_token_works(client, db, settings):
    settings.PORTAL_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_queue_depth_rates_and_workers_from_redis(client, redis_counters):
    store = flow.flow_store()
    now = int(time.time())
    # Every second around the rate window holds the same counts, so the request may start in the next second.
    for second in range(now - 10, now + 3):
        store.add(
            {"queued_frames": 30, "queued_batches": 1, "stored_frames": 20, "analysis_cpu_us": 50_000}, second
        )
    redis_counters.rpush("flow-test-queue", *[b"batch"] * 5)
    store.heartbeat("worker-1", 2, time.time())

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")

    assert response.status_code == 200
    body = response.json()
    assert body["capture"] == {
        "queue_batches": 5,
        "queue_frames": 150,
        "queued_fps": 30.0,
        "stored_fps": 20.0,
        "failed_fps": 0.0,
        "workers": 1,
        "worker_processes": 2,
        "backlog_s": 7.5,
        "analysis_ms_per_frame": 2.5,  # 50 ms of pipeline CPU for 20 frames each second
    }
    assert body["queue_bound_frames"] > 150 and body["queue_full"] is False
    assert set(body["web_process"]) == {
        "capture_sockets",
        "buffered_frames",
        "oldest_frame_age_s",  # how long the oldest frame not yet queued has waited (issue 13)
        "unstorable_frames",
        "fps_scale",
    }
    assert "no-cache" in response["Cache-Control"]


def test_prometheus_format_for_staff(client, redis_counters, staff):
    redis_counters.rpush("flow-test-queue", *[b"batch"] * 3)  # more than 2 per process: no worker here
    client.force_login(staff)
    response = client.get("/metrics?format=prometheus")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = dict(
        line.split(" ", 1) for line in response.content.decode().splitlines() if not line.startswith("#")
    )
    assert samples["portal_capture_queue_batches"] == "3"
    assert samples["portal_capture_backlog_seconds"] == "+Inf"  # queued, nothing stored lately
    assert samples["portal_capture_analysis_ms_per_frame"] == "NaN"
    assert "portal_workers" in samples and "portal_web_fps_scale" in samples
    assert samples["portal_web_oldest_frame_age_seconds"] == "0.0"
    assert samples["portal_web_unstorable_frames_total"] == "0"


def test_redis_away_is_a_503_not_a_crash(client, db, settings, staff):
    from tests.conftest import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.CAPTURE_ANALYSIS_BACKEND = "celery"
    flow._store.cache_clear()
    try:
        client.force_login(staff)
        response = client.get("/metrics")
        assert response.status_code == 503 and "capture load unavailable" in response.json()["error"]
    finally:
        flow._store.cache_clear()


def test_embedded_mode_reports_its_thread_pool(client, db, settings, staff):
    settings.REDIS_URL = ""
    settings.CAPTURE_ANALYSIS_BACKEND = "thread"
    flow._store.cache_clear()
    client.force_login(staff)
    body = client.get("/metrics").json()
    flow._store.cache_clear()
    assert body["capture"]["workers"] == 1
    assert body["capture"]["worker_processes"] == settings.CAPTURE_THREAD_WORKERS
    assert body["capture"]["queue_batches"] == 0
