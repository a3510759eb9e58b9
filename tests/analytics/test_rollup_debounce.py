"""Rollups are refreshed at most once per session per interval: leading edge at once, the rest at its end."""

from __future__ import annotations

import time

import pytest
import redis

from research_portal.analytics import debounce
from research_portal.analytics.models import SecondRollup
from research_portal.analytics.tasks import reconcile_rollups_task
from research_portal.capture.models import FrameResult
from tests.analytics.conftest import FrameWriter, new_participant

pytestmark = pytest.mark.django_db(transaction=True)  # the trailing refresh runs in a timer thread


def rolled_frames(session, second: int) -> int:
    """Frames of one second of the session in its rollups (all quality levels share level 0's count)."""
    row = SecondRollup.objects.filter(session_id=session.pk, second=second, level=0).first()
    return 0 if row is None else row.n_frames


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def embedded_debounce(settings):
    settings.ANALYTICS_ROLLUP_INTERVAL_S = 0.6
    settings.CAPTURE_ANALYSIS_BACKEND = "thread"
    settings.REDIS_URL = ""
    debounce._pending.cache_clear()


def test_first_batch_refreshes_at_once_later_ones_at_the_end_of_the_interval(acme, embedded_debounce):
    session = new_participant(acme.study, "DE")
    writer = FrameWriter(session)
    writer.store(acme.ad, 0, [0.5, 0.5])
    assert rolled_frames(session, 0) == 2  # leading edge: at once

    writer.store(acme.ad, 1, [0.5, 0.5, 0.5])
    writer.store(acme.ad, 2, [0.5])
    assert rolled_frames(session, 1) == 0  # inside the interval: pending
    assert debounce.pending_keys().peek(session.pk) == {(acme.ad.pk, 1), (acme.ad.pk, 2)}

    assert wait_until(lambda: rolled_frames(session, 1) == 3 and rolled_frames(session, 2) == 1)
    assert debounce.pending_keys().peek(session.pk) == set()


def test_sessions_are_debounced_independently(acme, embedded_debounce):
    first, second = new_participant(acme.study, "DE"), new_participant(acme.study, "FR")
    FrameWriter(first).store(acme.ad, 0, [0.5])
    FrameWriter(second).store(acme.ad, 0, [0.5])
    assert rolled_frames(first, 0) == 1 and rolled_frames(second, 0) == 1


def test_keys_left_pending_by_a_killed_worker_are_refreshed_by_the_reconcile(acme, redis_url, settings):
    """Keys in Redis whose trailing refresh never ran (the worker died) are picked up by the safety net."""
    settings.REDIS_URL = redis_url
    settings.ANALYTICS_ROLLUP_INTERVAL_S = 60
    debounce._pending.cache_clear()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{debounce.RedisPendingKeys.PREFIX}*"):
        client.delete(key)
    try:
        session = new_participant(acme.study, "DE")
        writer = FrameWriter(session)
        rows = writer.frames(acme.ad, 4, [0.5, 0.5])
        FrameResult.objects.bulk_create(rows)  # stored, but its refresh never happened
        debounce.pending_keys().add(session.pk, {(acme.ad.pk, 4)})
        assert rolled_frames(session, 4) == 0

        reconcile_rollups_task()

        assert rolled_frames(session, 4) == 2
        assert debounce.pending_keys().peek(session.pk) == set()
    finally:
        debounce._pending.cache_clear()
