"""The deployment mode: decided from REDIS_URL once, and everything that differs between the modes made for
the current one (research_portal/deployment.py)."""

from __future__ import annotations

import threading

import pytest

from research_portal import deployment
from research_portal.analytics.debounce import LocalJournal, RedisJournal, rollup_journal
from research_portal.analytics.live import LocalWindows, RedisWindows, live_windows
from research_portal.capture.acks import LocalAckInbox, RedisAckInbox, ack_inbox
from research_portal.capture.flow import LocalFlowCounters, RedisFlowCounters, flow_counters
from research_portal.capture.queueing import CeleryBackend, ThreadPoolBackend, analysis_backend
from research_portal.deployment import Deployment, Mode, ModeDependent


def test_redis_url_decides_the_mode(settings):
    settings.REDIS_URL = ""
    assert Deployment.from_settings() == Deployment(Mode.EMBEDDED)
    settings.REDIS_URL = "redis://cache:6379/0"
    assert Deployment.from_settings() == Deployment(Mode.PRODUCTION, "redis://cache:6379/0")


def test_every_mode_dependent_part_follows_the_mode(deployment_mode, redis_url):
    deployment_mode.embedded()
    made = [flow_counters(), analysis_backend(), ack_inbox(), rollup_journal(), live_windows()]
    assert [type(part) for part in made] == [
        LocalFlowCounters,
        ThreadPoolBackend,
        LocalAckInbox,
        LocalJournal,
        LocalWindows,
    ]
    assert flow_counters() is made[0]  # one per process, not one per call
    with pytest.raises(RuntimeError, match="embedded mode has no Redis"):
        deployment.redis_client()

    deployment_mode.production(redis_url)
    made = [flow_counters(), analysis_backend(), ack_inbox(), rollup_journal(), live_windows()]
    assert [type(part) for part in made] == [
        RedisFlowCounters,
        CeleryBackend,
        RedisAckInbox,
        RedisJournal,
        RedisWindows,
    ]
    client = deployment.redis_client()
    assert all(part.redis is client for part in made)  # one pool per process
    assert client.ping()


def test_one_timeout_policy_for_every_client(deployment_mode, redis_url):
    deployment_mode.production(redis_url)
    options = deployment.redis_client().connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (deployment.REDIS_TIMEOUT_S,) * 2
    asynchronous = deployment.async_redis_client()
    options = asynchronous.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (deployment.REDIS_TIMEOUT_S,) * 2


def test_a_part_is_made_once_per_mode_even_when_threads_race(deployment_mode):
    deployment_mode.embedded()
    calls = []
    part = ModeDependent(embedded=lambda: calls.append(1) or object(), production=lambda client: object())
    got = []
    threads = [threading.Thread(target=lambda: got.append(part())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len({id(made) for made in got}) == 1
    deployment_mode.embedded()  # a switch (even to the same mode) makes everything anew
    assert part() is not got[0] and len(calls) == 2


def test_the_thread_pool_reports_the_batches_waiting_for_it(deployment_mode):
    deployment_mode.embedded()
    backend = analysis_backend()
    release = threading.Event()
    backend.executor.submit(release.wait, 60)  # the only analysis thread is busy
    for _ in range(3):
        backend.submit([], None)
    assert backend.queue_batches() == 3 and not backend.wait_until_done(timeout_s=0.1)
    release.set()
    assert backend.wait_until_done(timeout_s=60) and backend.queue_batches() == 0
