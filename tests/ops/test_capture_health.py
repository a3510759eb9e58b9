"""/readyz and /metrics show a web process whose frames stop leaving (docs/security.md, L10).

The report: a batcher stuck retrying one batch for ever stopped the acks of every socket of its process
while /healthz and /readyz said 200. Here a batch really hangs (another Postgres connection holds its
session's row, so the batch's UPDATE waits): the `capture` check fails once its oldest frame has waited
CAPTURE_STUCK_AFTER_S, /metrics shows the age, and both recover when the batch goes through.
"""

from __future__ import annotations

import asyncio
import json
import time

import psycopg2
import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import AsyncClient

from research_portal.capture.models import ParticipantSession
from research_portal.ops.checks import probe_capture
from tests.capture.test_frame_path_hardening import frame_message, open_socket
from tests.support.readings import new_viewer

METRICS_TOKEN = "capture-health-3b9c"


def lock_session_row(session_id: int):
    """A second Postgres connection holding the session's row until rolled back."""
    params = connection.settings_dict
    locker = psycopg2.connect(
        dbname=params["NAME"],
        user=params["USER"] or "postgres",
        password=params["PASSWORD"] or None,
        host=params["HOST"] or "127.0.0.1",
        port=params["PORT"] or 5432,
    )
    with locker.cursor() as cursor:
        table = ParticipantSession._meta.db_table
        cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [session_id])
    return locker


@pytest.mark.django_db(transaction=True)
async def test_a_stuck_batch_fails_readyz_and_shows_in_metrics_until_it_goes_through(
    acme, face_jpegs, deployment_mode, settings
):
    if connection.vendor != "postgresql":
        pytest.fail("needs Postgres (row locks)")
    deployment_mode.embedded()
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.05
    settings.CAPTURE_STUCK_AFTER_S = 1.0
    settings.PORTAL_METRICS_TOKEN = METRICS_TOKEN
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    communicator, _ = await open_socket(session.token)
    client = AsyncClient()
    locker = await asyncio.to_thread(lock_session_row, session.pk)
    try:
        await communicator.send_to(bytes_data=frame_message(0, acme.ad.pk, face_jpegs[0]))
        await asyncio.sleep(1.5)
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        prometheus = await client.get(
            "/metrics?format=prometheus", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
    finally:
        await asyncio.to_thread(locker.rollback)
        await asyncio.to_thread(locker.close)
    body = ready.json()
    assert ready.status_code == 503, body
    assert body["capture"]["ok"] is False and body["capture"]["oldest_frame_age_s"] >= 1.0, body["capture"]
    assert "oldest frame waiting" in body["capture"]["detail"]
    assert all(body[name]["ok"] for name in ("database", "redis", "model"))  # only the frame path is stuck
    assert metrics.json()["web_process"]["oldest_frame_age_s"] >= 1.0
    age = dict(line.split(" ", 1) for line in prometheus.content.decode().splitlines() if line[0] != "#")
    assert float(age["portal_web_oldest_frame_age_seconds"]) >= 1.0

    # The lock is gone: the batch goes through, the frame is acked, and the process is ready again.
    assert json.loads(await communicator.receive_from(timeout=30)) == {"type": "ack", "seqs": [0]}
    await communicator.disconnect()
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["capture"]["oldest_frame_age_s"] == 0.0


def test_a_process_without_capture_sockets_is_ready():
    started = time.monotonic()
    result = probe_capture()
    assert result.ok and result.extra == {"oldest_frame_age_s": 0.0, "buffered_frames": 0}
    assert time.monotonic() - started < 0.1
