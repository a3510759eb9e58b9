"""Live view: stored frames reach a subscribed dashboard socket through the channel layer, after commit and
throttled per group; sockets check access like the pages do."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.urls import path

from research_portal.analytics.consumers import AdDashboardConsumer, StudyOverviewConsumer
from research_portal.analytics.live import GroupThrottle, LocalWindows, RedisWindows, ad_group
from research_portal.capture.services import store_results
from tests.analytics.conftest import FrameWriter, new_participant

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
async def close_thread_connections():
    """database_sync_to_async runs ORM calls on a worker thread whose connection would outlive the test (and
    keep the test database from being dropped)."""
    yield
    await database_sync_to_async(connections.close_all)()


def application():
    return URLRouter(
        [
            path("ws/analytics/ads/<int:target_id>/", AdDashboardConsumer.as_asgi()),
            path("ws/analytics/studies/<int:target_id>/", StudyOverviewConsumer.as_asgi()),
        ]
    )


async def open_socket(user, url: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application(), url)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, group: str, message: dict) -> None:
        with self.lock:
            self.sent.append((time.monotonic(), group))


def test_throttle_sends_the_first_change_at_once_and_folds_the_rest_into_one(settings):
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.2
    recorder, windows = Recorder(), LocalWindows()
    throttle = GroupThrottle(send=recorder, store=lambda: windows)
    started = time.monotonic()
    for _ in range(50):  # a burst: e.g. 50 batches stored within a few milliseconds
        throttle.submit("analytics-ad-1", {"type": "analytics.changed"})
    throttle.submit("analytics-ad-2", {"type": "analytics.changed"})
    assert [group for _t, group in recorder.sent] == ["analytics-ad-1", "analytics-ad-2"]
    time.sleep(0.45)
    times = [t - started for t, group in recorder.sent if group == "analytics-ad-1"]
    assert len(times) == 2, "leading + one trailing message, not 50"
    assert 0.15 <= times[1] <= 0.4  # the trailing one waits for the window to end


def test_throttle_windows_are_shared_through_redis(settings, redis_url):
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.3
    client = redis.Redis.from_url(redis_url)
    client.delete("analytics:live:window:g-shared", "analytics:live:pending:g-shared")
    recorder = Recorder()
    # Two throttles with their own Redis clients stand for two worker processes.
    windows_a, windows_b = RedisWindows(redis_url), RedisWindows(redis_url)
    first = GroupThrottle(send=recorder, store=lambda: windows_a)
    second = GroupThrottle(send=recorder, store=lambda: windows_b)
    for _ in range(10):
        first.submit("g-shared", {"type": "analytics.changed"})
        second.submit("g-shared", {"type": "analytics.changed"})
    assert len(recorder.sent) == 1
    time.sleep(0.6)
    assert len(recorder.sent) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_stored_frames_are_pushed_to_a_subscribed_dashboard(acme, analysts, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.2
    socket = await open_socket(analysts.acme, f"/ws/analytics/ads/{acme.ad.pk}/")
    assert await socket.receive_json_from() == {"type": "hello", "kind": "ad", "id": acme.ad.pk}
    await socket.send_json_to({"type": "subscribe", "filters": {"country": ["DE"], "baseline": ""}})
    assert (await socket.receive_json_from())["type"] == "subscribed"

    def participant_watches(country: str, smiles: list[float]) -> None:
        writer = FrameWriter(new_participant(acme.study, country))
        for second, smile in enumerate(smiles):
            writer.store(acme.ad, second, [smile, smile])  # one batch per second, as the socket flushes

    await database_sync_to_async(participant_watches)("DE", [0.2, 0.6, 0.4])
    update = await socket.receive_json_from(timeout=5)
    assert update["type"] == "update" and update["data"]["filters"]["country"] == ["DE"]
    await asyncio.sleep(0.4)  # the trailing message of the burst
    while not await socket.receive_nothing(timeout=0.3):
        update = await socket.receive_json_from()
    smile = next(t for t in update["data"]["figures"]["trace"]["data"] if t["name"] == "Smile")
    assert smile["y"][:3] == pytest.approx([0.2, 0.6, 0.4]) and update["data"]["totals"]["participants"] == 1

    # Three batches, at most two pushes (leading + trailing); a US participant is not in the DE view.
    await database_sync_to_async(participant_watches)("US", [0.9, 0.9, 0.9])
    pushes = []
    while not await socket.receive_nothing(timeout=0.6):
        pushes.append(await socket.receive_json_from())
    assert 1 <= len(pushes) <= 2
    assert pushes[-1]["data"]["totals"]["participants"] == 1
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_study_socket_pushes_the_overview_when_a_session_completes(
    acme, analysts, settings, inline_refresh
):
    settings.CHANNEL_LAYERS = IN_MEMORY
    session = await database_sync_to_async(new_participant)(acme.study, "JP")
    await database_sync_to_async(FrameWriter(session).store)(acme.ad, 0, [0.5])
    socket = await open_socket(analysts.admin, f"/ws/analytics/studies/{acme.study.pk}/")
    assert (await socket.receive_json_from())["kind"] == "study"

    def complete() -> None:
        session.state = "completed"
        session.save(update_fields=["state"])  # post_save -> re-file the session -> notify the study group

    await asyncio.sleep(1.1)  # let the first store's throttle window pass
    await database_sync_to_async(complete)()
    update = await socket.receive_json_from(timeout=5)
    while not await socket.receive_nothing(timeout=0.3):
        update = await socket.receive_json_from()
    assert update["type"] == "update" and update["data"]["total"]["validated"] == 1
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_sockets_check_access(acme, analysts, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    from django.contrib.auth.models import AnonymousUser

    for user, code in ((analysts.other, 4004), (AnonymousUser(), 4001)):
        for url in (f"/ws/analytics/ads/{acme.ad.pk}/", f"/ws/analytics/studies/{acme.study.pk}/"):
            communicator = WebsocketCommunicator(application(), url)
            communicator.scope["user"] = user
            await communicator.connect()
            assert (await communicator.receive_output(timeout=2)) == {"type": "websocket.close", "code": code}
    communicator = WebsocketCommunicator(application(), "/ws/analytics/ads/999999/")
    communicator.scope["user"] = analysts.admin
    await communicator.connect()
    assert (await communicator.receive_output(timeout=2))["code"] == 4004


def test_nothing_is_pushed_before_commit(acme, settings, django_capture_on_commit_callbacks, monkeypatch):
    """Inside a transaction the push waits for the commit (a rolled-back batch is never announced)."""
    sent = []
    monkeypatch.setattr(
        "research_portal.analytics.live.throttle.submit", lambda group, message: sent.append(group)
    )
    writer = FrameWriter(new_participant(acme.study, "DE"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        store_results(writer.frames(acme.ad, 0, [0.3]))
        assert sent == []
    for callback in callbacks:
        callback()
    assert sorted(sent) == sorted([f"analytics-study-{acme.study.pk}", ad_group(acme.ad.pk)])
