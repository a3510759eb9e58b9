"""Live view: stored frames reach a subscribed dashboard socket through the channel layer, after commit and
throttled per group; sockets check access like the pages do."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from http.cookies import SimpleCookie

import pytest
import redis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from django.urls import path
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from research_portal.analytics.consumers import AdDashboardConsumer, StudyOverviewConsumer
from research_portal.analytics.live import GroupThrottle, LocalWindows, RedisWindows, ad_group
from research_portal.capture.storage import store_results
from tests.support.processes import free_port
from tests.support.readings import FrameWriter, new_participant
from tests.support.services import service_env, start_daphne

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


async def receive_update(socket: WebsocketCommunicator, timeout: float = 5) -> dict:
    """The next recomputed dashboard (`update`), skipping the provisional `live` figures an ad socket also
    gets when frames are stored (test_live_provisional.py)."""
    while True:
        message = await socket.receive_json_from(timeout=timeout)
        if message["type"] != "live":
            return message


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
    windows_a, windows_b = (RedisWindows(redis.Redis.from_url(redis_url)) for _ in range(2))
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
    # Wide enough that a loaded machine still stores the three batches of a burst within one interval.
    settings.ANALYTICS_LIVE_INTERVAL_S = 1.0
    socket = await open_socket(analysts.acme, f"/ws/analytics/ads/{acme.ad.pk}/")
    assert await socket.receive_json_from() == {"type": "hello", "kind": "ad", "id": acme.ad.pk}
    await socket.send_json_to({"type": "subscribe", "filters": {"country": ["DE"], "baseline": ""}})
    assert (await socket.receive_json_from())["type"] == "subscribed"

    def participant_watches(country: str, smiles: list[float]) -> None:
        writer = FrameWriter(new_participant(acme.study, country))
        for second, smile in enumerate(smiles):
            writer.store(acme.ad, second, [smile, smile])  # one batch per second, as the socket flushes

    await database_sync_to_async(participant_watches)("DE", [0.2, 0.6, 0.4])
    update = await receive_update(socket)
    assert update["type"] == "update" and update["data"]["filters"]["country"] == ["DE"]
    await asyncio.sleep(1.2)  # the trailing message of the burst
    while not await socket.receive_nothing(timeout=0.5):
        message = await socket.receive_json_from()
        if message["type"] == "update":  # (not the provisional "live" figures: test_live_provisional.py)
            update = message
    smile = next(t for t in update["data"]["figures"]["trace"]["data"] if t["name"] == "Smile")
    assert smile["y"][:3] == pytest.approx([0.2, 0.6, 0.4]) and update["data"]["totals"]["participants"] == 1

    # Three batches, at most two pushes (leading + trailing); a US participant is not in the DE view.
    await database_sync_to_async(participant_watches)("US", [0.9, 0.9, 0.9])
    pushes = []
    while not await socket.receive_nothing(timeout=1.5):
        message = await socket.receive_json_from()
        if message["type"] == "update":
            pushes.append(message)
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
        "research_portal.analytics.live.throttle.submit", lambda group, message, **_: sent.append(group)
    )
    writer = FrameWriter(new_participant(acme.study, "DE"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        store_results(writer.frames(acme.ad, 0, [0.3]))
        assert sent == []
    for callback in callbacks:
        callback()
    # The rollups' push to the study and the ad, and the ad's provisional live figures (provisional.py).
    ad = ad_group(acme.ad.pk)
    assert sorted(sent) == sorted([f"analytics-study-{acme.study.pk}", ad, ad])


# ---- access is re-checked while a socket is open (docs/security.md, L6) ------------------------------------


async def receive_close(socket: WebsocketCommunicator, timeout: float = 5) -> int:
    """The close code the server sends next, skipping any message before it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await socket.receive_output(timeout=deadline - time.monotonic())
        if message["type"] == "websocket.close":
            return message.get("code")
    raise AssertionError("the socket was not closed")


async def subscribed_socket(user, ad) -> WebsocketCommunicator:
    socket = await open_socket(user, f"/ws/analytics/ads/{ad.pk}/")
    assert (await socket.receive_json_from())["type"] == "hello"
    await socket.send_json_to({"type": "subscribe", "filters": {}})
    assert (await socket.receive_json_from())["type"] == "subscribed"
    return socket


def participant_watches(acme) -> None:
    FrameWriter(new_participant(acme.study, "DE")).store(acme.ad, 0, [0.4])


def second_analyst(acme):
    """Ben, Acme's other analyst."""
    from research_portal.accounts.models import Role
    from tests.support.people import member

    return member(acme.organization, Role.ANALYST, "ben")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_a_removed_member_is_closed_while_the_other_member_keeps_receiving(acme, analysts, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.1
    settings.ANALYTICS_LIVE_ACCESS_RECHECK_S = 3600  # only the membership signal can close it in time
    from research_portal.accounts.models import Membership
    from research_portal.accounts.services import do_remove_member

    ben = await database_sync_to_async(second_analyst)(acme)
    ana_socket = await subscribed_socket(analysts.acme, acme.ad)
    ben_socket = await subscribed_socket(ben, acme.ad)

    await database_sync_to_async(
        lambda: do_remove_member(Membership.objects.get(user=analysts.acme), analysts.admin)
    )()
    assert await receive_close(ana_socket) == 4003  # access withdrawn

    await database_sync_to_async(participant_watches)(acme)
    update = await receive_update(ben_socket)
    assert update["type"] == "update" and update["data"]["totals"]["participants"] == 1
    assert await ana_socket.receive_nothing(timeout=0.5)
    await ben_socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_access_is_rechecked_before_a_push_even_without_a_signal(acme, analysts, settings):
    """A change no signal announces (a queryset .update(), raw SQL) is caught by the check before a push."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.1
    settings.ANALYTICS_LIVE_ACCESS_RECHECK_S = 0
    from research_portal.accounts.models import Membership, Organization

    socket = await subscribed_socket(analysts.acme, acme.ad)
    await database_sync_to_async(
        lambda: Membership.objects.filter(user=analysts.acme).update(
            organization=Organization.objects.create(name="Elsewhere")
        )
    )()
    await database_sync_to_async(participant_watches)(acme)
    assert await receive_close(socket) == 4003  # and no update before it


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_deactivated_users_and_moved_studies_close_their_sockets(acme, analysts, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.ANALYTICS_LIVE_ACCESS_RECHECK_S = 3600
    from research_portal.accounts.models import Organization

    ben = await database_sync_to_async(second_analyst)(acme)
    ana_socket = await subscribed_socket(analysts.acme, acme.ad)
    study_socket = await open_socket(ben, f"/ws/analytics/studies/{acme.study.pk}/")
    assert (await study_socket.receive_json_from())["type"] == "hello"
    root_socket = await subscribed_socket(analysts.admin, acme.ad)

    def deactivate() -> None:
        analysts.acme.is_active = False
        analysts.acme.save()

    await database_sync_to_async(deactivate)()
    assert await receive_close(ana_socket) == 4001  # no longer signed in

    def move_study() -> None:
        acme.study.organization = Organization.objects.create(name="Bought by Rival")
        acme.study.save()

    await database_sync_to_async(move_study)()
    assert await receive_close(study_socket) == 4003
    assert await root_socket.receive_nothing(timeout=0.5)  # a superuser still sees the moved study
    await root_socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_subscribe_refuses_filters_of_a_wrong_type_or_with_control_characters(acme, analysts, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    socket = await open_socket(analysts.acme, f"/ws/analytics/ads/{acme.ad.pk}/")
    assert (await socket.receive_json_from())["type"] == "hello"
    for filters in (
        {"model": "\x00"},
        {"compare": ["\x00x", "DE"]},
        {"quality": {"level": 1}},
        {"country": [["DE"]]},
        {"country": None},
        {"baseline": "maybe"},
        {"quality": float("nan")},
        {"model": "m" * 65},
        "country=DE",
        ["DE"],
        None,
    ):
        await socket.send_json_to({"type": "subscribe", "filters": filters})
        answer = await socket.receive_json_from(timeout=5)
        assert answer["type"] == "error", filters
    await socket.send_json_to({"type": "subscribe", "filters": {"country": ["DE"], "completed": True}})
    assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
    await socket.disconnect()


def test_on_a_real_server_a_removed_member_stops_while_the_other_keeps_receiving(
    acme, cast, postgres, redis_url, tmp_path
):
    """daphne as deployed, the Redis channel layer, the team page's remove button: Alice removes Bob, whose
    socket is closed (4003) at once, while Ben's keeps receiving; signing out closes it (4001)."""
    from research_portal.accounts.models import Membership

    ben = second_analyst(acme)
    cookies = {}
    for user in (cast.bob, ben, cast.alice):
        client = Client()
        client.force_login(user)
        cookies[user.username] = client.cookies["sessionid"].value
    # Only the signal can close a socket this fast: the periodic re-check is an hour away.
    env = {**service_env(postgres, redis_url), "ANALYTICS_LIVE_ACCESS_RECHECK_S": "3600"}
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    base = f"http://127.0.0.1:{port}"

    def live(stack: ExitStack, username: str):
        socket = stack.enter_context(
            connect(
                f"ws://127.0.0.1:{port}/ws/analytics/ads/{acme.ad.pk}/",
                additional_headers={"Cookie": f"sessionid={cookies[username]}", "Origin": base},
                max_size=None,
                proxy=None,
            )
        )
        assert json.loads(socket.recv(timeout=10))["type"] == "hello"
        socket.send(json.dumps({"type": "subscribe", "filters": {"country": ["DE"]}}))
        assert json.loads(socket.recv(timeout=10))["type"] == "subscribed"
        return socket

    def close_code(socket) -> int:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                socket.recv(timeout=deadline - time.monotonic())
        except ConnectionClosed as closed:
            return closed.rcvd.code
        raise AssertionError("still open")

    def post_as(username: str, path: str, form_page: str) -> int:
        jar = {"sessionid": cookies[username]}
        page = requests_get(base + form_page, jar)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page["body"])[1]
        jar["csrftoken"] = page["cookies"]["csrftoken"]
        return requests_post(base + path, jar, {"csrfmiddlewaretoken": token}, referer=base + form_page)

    try:
        with ExitStack() as stack:
            bob_socket, ben_socket = live(stack, "bob"), live(stack, "ben")
            membership = Membership.objects.get(user=cast.bob)
            team = f"/accounts/team/{acme.organization.pk}/"
            assert post_as("alice", f"/accounts/members/{membership.pk}/remove/", team) == 302
            assert close_code(bob_socket) == 4003

            participant_watches(acme)  # stored here; announced through Redis to the server's sockets
            update = {"type": "live"}
            while update["type"] == "live":  # (the provisional figures may come first)
                update = json.loads(ben_socket.recv(timeout=15))
            assert update["type"] == "update" and update["data"]["totals"]["participants"] == 1

            assert post_as("ben", "/accounts/logout/", "/studies/") == 302
            assert close_code(ben_socket) == 4001
    finally:
        server.stop()


def requests_get(url: str, cookies: dict[str, str]) -> dict:
    request = urllib.request.Request(
        url, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        jar = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        return {
            "body": response.read().decode(),
            "cookies": {name: morsel.value for name, morsel in jar.items()},
        }


def requests_post(url: str, cookies: dict[str, str], data: dict, referer: str) -> int:
    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(data).encode(),
        headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "Referer": referer},
    )
    try:
        with urllib.request.build_opener(NoRedirects()).open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
