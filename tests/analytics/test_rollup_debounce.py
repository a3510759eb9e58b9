"""Rollups are refreshed at most once per session per interval: leading edge at once, the rest at its end."""

from __future__ import annotations

import time

import pytest
import redis

from research_portal.analytics import debounce
from research_portal.analytics.models import SecondRollup
from research_portal.analytics.tasks import reconcile_rollups_task
from research_portal.capture.models import FrameResult
from tests.support.polling import eventually
from tests.support.readings import FrameWriter, new_participant

pytestmark = pytest.mark.django_db(transaction=True)  # the trailing refresh runs in a timer thread


def rolled_frames(session, second: int) -> int:
    """Frames of one second of the session in its rollups (all quality levels share level 0's count)."""
    row = SecondRollup.objects.filter(session_id=session.pk, second=second, level=0).first()
    return 0 if row is None else row.n_frames


@pytest.fixture
def embedded_debounce(deployment_mode, settings):
    # Long enough that the second and third store land inside the first one's interval on a loaded CI
    # machine (0.6 s was not: a CI run took longer than that between two stores).
    settings.ANALYTICS_ROLLUP_INTERVAL_S = 3.0
    deployment_mode.embedded()


def test_first_batch_refreshes_at_once_later_ones_at_the_end_of_the_interval(acme, embedded_debounce):
    session = new_participant(acme.study, "DE")
    writer = FrameWriter(session)
    writer.store(acme.ad, 0, [0.5, 0.5])
    assert rolled_frames(session, 0) == 2  # leading edge: at once

    writer.store(acme.ad, 1, [0.5, 0.5, 0.5])
    writer.store(acme.ad, 2, [0.5])
    assert rolled_frames(session, 1) == 0  # inside the interval: pending
    assert debounce.rollup_journal().peek(session.pk) == {(acme.ad.pk, 1), (acme.ad.pk, 2)}

    # The flusher thread refreshes them once the interval has ended.
    assert eventually(lambda: rolled_frames(session, 1) == 3 and rolled_frames(session, 2) == 1, timeout_s=15)
    assert debounce.rollup_journal().peek(session.pk) == set()


def test_sessions_are_debounced_independently(acme, embedded_debounce):
    first, second = new_participant(acme.study, "DE"), new_participant(acme.study, "FR")
    FrameWriter(first).store(acme.ad, 0, [0.5])
    FrameWriter(second).store(acme.ad, 0, [0.5])
    assert rolled_frames(first, 0) == 1 and rolled_frames(second, 0) == 1


@pytest.fixture
def redis_journal(redis_url, deployment_mode):
    deployment_mode.production(redis_url)
    client = redis.Redis.from_url(redis_url)

    def clear() -> None:
        for key in client.scan_iter(f"{debounce.RedisJournal.PREFIX}*"):
            client.delete(key)

    clear()
    yield debounce.rollup_journal()
    clear()  # no keys left for a flusher thread to refresh after this test's database is gone


def test_redis_journal_claims_each_session_once_per_interval(acme, redis_journal):
    interval_s = 1.5  # room for the three calls inside it on a loaded machine
    touched = {1: {(7, 0)}, 2: {(7, 0), (None, 3)}}
    assert sorted(redis_journal.add_and_claim(touched, interval_s)) == [1, 2]  # leading edge: both free
    assert redis_journal.add_and_claim({1: {(7, 1)}}, interval_s) == []  # inside the interval: journaled only
    assert redis_journal.claim_due(interval_s) == []
    assert redis_journal.peek(1) == {(7, 0), (7, 1)} and redis_journal.peek(2) == {(7, 0), (None, 3)}
    time.sleep(interval_s + 0.1)
    assert sorted(redis_journal.claim_due(interval_s)) == [1, 2]  # trailing edge
    redis_journal.remove(1, {(7, 0), (7, 1)})
    assert redis_journal.sessions() == [2] and redis_journal.peek(1) == set()


def test_keys_left_by_a_killed_worker_are_refreshed_by_the_reconcile(acme, redis_journal, settings):
    """Keys journaled in Redis whose refresh never ran (the worker died) are picked up by the safety net."""
    settings.ANALYTICS_ROLLUP_INTERVAL_S = 60
    session = new_participant(acme.study, "DE")
    rows = FrameWriter(session).frames(acme.ad, 4, [0.5, 0.5])
    FrameResult.objects.bulk_create(rows)  # stored, but its refresh never happened
    assert redis_journal.add_and_claim({session.pk: {(acme.ad.pk, 4)}}, 60) == [session.pk]
    assert rolled_frames(session, 4) == 0  # the claiming worker "died" here

    reconcile_rollups_task()

    assert rolled_frames(session, 4) == 2
    assert redis_journal.peek(session.pk) == set() and redis_journal.sessions() == []
