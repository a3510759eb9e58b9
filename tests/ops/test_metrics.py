"""GET /metrics: the capture path's load for operators (staff) and scrapers (bearer token)."""

from __future__ import annotations

import math
import time

import pytest
from django.contrib.auth import get_user_model
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from research_portal.accounts.models import Organization, Role
from research_portal.capture import flow
from research_portal.ops.metrics import prometheus_text
from tests.support.people import member

METRICS_TOKEN = "scrape-me-7c1f"
GAUGES = (
    "portal_capture_queue_batches",
    "portal_capture_queue_frames",
    "portal_capture_queue_bound_frames",
    "portal_capture_backlog_seconds",
    "portal_capture_queued_frames_per_second",
    "portal_capture_stored_frames_per_second",
    "portal_capture_capacity_frames_per_second",
    "portal_capture_failed_frames_per_second",
    "portal_capture_analysis_ms_per_frame",
    "portal_workers",
    "portal_worker_processes",
    "portal_web_capture_sockets",
    "portal_web_buffered_frames",
    "portal_web_oldest_frame_age_seconds",
    "portal_web_fps_scale",
)


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
    client.force_login(member(Organization.objects.create(name="Acme Research"), Role.ADMIN, "alice"))
    assert client.get("/metrics").status_code == 403  # an organisation admin is not an operator
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_no_token_configured_means_no_token_works(client, db, settings):
    settings.PORTAL_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_queue_depth_rates_and_workers_from_redis(client, redis_counters):
    store = flow.flow_counters()
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
        "capacity_fps": 20.0,  # the workers did not say how long they were busy: what they stored
        "analysis_ms_per_frame": 2.5,  # 50 ms of pipeline CPU for 20 frames each second
    }
    assert body["queue_bound_frames"] > 150 and body["queue_full"] is False
    assert set(body["web_process"]) == {
        "capture_sockets",
        "buffered_frames",
        "oldest_frame_age_s",  # how long the oldest frame not yet queued has waited
        "unstorable_frames",
        "fps_scale",
    }
    assert "no-cache" in response["Cache-Control"]


def scraped(response) -> dict[str, Metric]:
    """The exposition as a Prometheus scraper parses it: family name -> family (type, help, samples)."""
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def test_prometheus_format_for_staff(client, redis_counters, staff):
    redis_counters.rpush("flow-test-queue", *[b"batch"] * 3)  # more than 2 per process: no worker here
    client.force_login(staff)
    response = client.get("/metrics?format=prometheus")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = scraped(response)
    # Every metric, once, with its type and help text; a counter's family drops the `_total` of its sample.
    assert {name: family.type for name, family in families.items()} == {
        **dict.fromkeys(GAUGES, "gauge"),
        "portal_web_unstorable_frames": "counter",
    }
    assert all(family.documentation for family in families.values())
    value = {family.samples[0].name: family.samples[0].value for family in families.values()}
    assert all(len(family.samples) == 1 for family in families.values())
    assert value["portal_capture_queue_batches"] == 3
    assert value["portal_capture_backlog_seconds"] == math.inf  # queued, nothing stored lately
    assert math.isnan(value["portal_capture_analysis_ms_per_frame"])
    assert value["portal_web_oldest_frame_age_seconds"] == 0.0
    assert value["portal_web_unstorable_frames_total"] == 0
    assert value["portal_web_fps_scale"] == 1.0 and value["portal_workers"] == 0
    # The same snapshot as the JSON form.
    body = client.get("/metrics").json()
    assert value["portal_capture_queue_bound_frames"] == body["queue_bound_frames"]
    assert value["portal_worker_processes"] == body["capture"]["worker_processes"]


def test_each_scrape_is_its_own_snapshot(client, redis_counters, staff):
    """No metric outlives its request: the next scrape shows the new queue, nothing is kept in the process's
    default registry, and the body is exactly what this snapshot gives."""
    client.force_login(staff)
    first = scraped(client.get("/metrics?format=prometheus"))
    redis_counters.rpush("flow-test-queue", *[b"batch"] * 4)
    second = scraped(client.get("/metrics?format=prometheus"))
    assert first["portal_capture_queue_batches"].samples[0].value == 0
    assert second["portal_capture_queue_batches"].samples[0].value == 4
    assert all(REGISTRY.get_sample_value(name) is None for name in GAUGES)
    snapshot = {
        "capture": {
            "queue_batches": 2,
            "queue_frames": 40,
            "queued_fps": 12.5,
            "stored_fps": 10.0,
            "failed_fps": 0.5,
            "workers": 1,
            "worker_processes": 4,
            "backlog_s": 4.0,
            "capacity_fps": 10.0,
            "analysis_ms_per_frame": 31.2,
        },
        "queue_bound_frames": 5000,
        "queue_full": False,
        "web_process": {
            "capture_sockets": 7,
            "buffered_frames": 3,
            "oldest_frame_age_s": 0.25,
            "unstorable_frames": 2,
            "fps_scale": 0.5,
        },
    }
    text = prometheus_text(snapshot).decode()
    assert "# HELP portal_capture_backlog_seconds Queued frames over the workers' capacity\n" in text
    assert "# TYPE portal_web_unstorable_frames_total counter\n" in text
    assert "\nportal_web_unstorable_frames_total 2.0\n" in text
    assert "portal_capture_analysis_ms_per_frame 31.2\n" in text and "portal_web_fps_scale 0.5\n" in text


def test_redis_away_is_a_503_not_a_crash(client, db, deployment_mode, staff):
    from tests.support.processes import free_port

    deployment_mode.production(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    client.force_login(staff)
    response = client.get("/metrics")
    assert response.status_code == 503 and "capture load unavailable" in response.json()["error"]


def test_embedded_mode_reports_its_thread_pool(client, db, settings, deployment_mode, staff):
    deployment_mode.embedded()
    client.force_login(staff)
    body = client.get("/metrics").json()
    assert body["capture"]["workers"] == 1
    assert body["capture"]["worker_processes"] == settings.CAPTURE_THREAD_WORKERS
    assert body["capture"]["queue_batches"] == 0
