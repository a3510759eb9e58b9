"""Floods from one socket, token or address stay theirs.

Page events are limited per socket (a burst, then a steady rate; beyond, `rate_limited` and no row);
connects per token and per client address (beyond, `too_many_connections` and close 4029); frames per
socket (a burst of 30, then 3x the study's rate times the flow-control scale), so one socket's burst never
lowers the capture rate of the others.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest
import redis
from channels.db import database_sync_to_async

from research_portal.capture.models import SessionEvent
from research_portal.capture.socket_limits import (
    MAX_REJECTIONS,
    RATE_LIMITED,
    REFUSAL_BUDGET,
    SocketLimits,
    TokenBucket,
)
from research_portal.capture.wire import FrameRejected
from tests.capture.test_frame_path_hardening import Socket, open_socket, wait_for_stored
from tests.support.processes import free_port
from tests.support.readings import new_viewer
from tests.support.services import service_env, start_daphne


@pytest.fixture
def embedded(deployment_mode):
    deployment_mode.embedded()


@pytest.mark.django_db(transaction=True)
async def test_an_event_flood_writes_a_bounded_number_of_rows_and_the_socket_goes_on(
    acme, embedded, settings
):
    """The report: 2000 events in 10 s wrote 2000 rows."""
    settings.CAPTURE_EVENT_BURST = 20
    settings.CAPTURE_EVENTS_PER_S = 0.5
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    communicator, _ = await open_socket(session.token)
    event = json.dumps({"type": "event", "name": "tab_hidden", "ad_id": acme.ad.pk, "media_time_ms": 100})
    started = time.monotonic()
    for _ in range(1000):
        await communicator.send_to(text_data=event)
    await communicator.send_to(text_data=json.dumps({"type": "finish"}))  # still listening after the flood
    refusals = []
    while (output := await communicator.receive_output(timeout=30))["type"] != "websocket.close":
        refusals.append(json.loads(output["text"]))
    elapsed = time.monotonic() - started
    await communicator.disconnect()
    assert output["code"] == 1000
    assert {(r["code"], r["seq"]) for r in refusals} == {(RATE_LIMITED, None)}
    rows = await database_sync_to_async(SessionEvent.objects.filter(session=session).count)()
    assert 20 <= rows <= 20 + 0.5 * elapsed + 1, (rows, elapsed)
    assert rows + len(refusals) == 1000  # every event recorded or refused, none silently dropped


def clear_connect_counters(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*capture:connects:*"):
        client.delete(key)


def test_connects_are_limited_per_token_and_per_client_address(acme, postgres, redis_url, tmp_path):
    """A real daphne with the connect counters in the real Redis cache, every socket from 127.0.0.1."""
    clear_connect_counters(redis_url)
    env = {**service_env(postgres, redis_url), "CAPTURE_CONNECTS_PER_IP": "45/60"}  # per token: "20/60"
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    base = f"http://127.0.0.1:{port}"
    session = new_viewer(acme.study, "p-1")

    async def attempt(token: str) -> tuple[Socket, int | None]:
        """The socket, and its close code when the server refused it (an error is then its first word)."""
        socket = await Socket.open(base, token)
        assert await socket.wait_for(lambda: socket.messages, 30)
        return socket, (await socket.closed() if socket.messages[0]["type"] == "error" else None)

    async def scenario():
        same_token = await asyncio.gather(*(attempt(session.token) for _ in range(30)))
        unknown = await asyncio.gather(*(attempt(secrets.token_urlsafe(32)) for _ in range(20)))
        for socket, _ in same_token + unknown:
            await socket.close()
        return same_token, unknown

    try:
        same_token, unknown = asyncio.run(scenario())
    finally:
        server.stop()
    assert sum(socket.messages[0]["type"] == "hello" for socket, _ in same_token) == 20
    refused = [(socket.errors, code) for socket, code in same_token if code is not None]
    assert refused == [([("too_many_connections", None)], 4029)] * 10
    # 30 connects from this address so far; 15 more pass (and find no session), then the address is refused.
    assert sorted(code for _, code in unknown) == [4001] * 15 + [4029] * 5
    assert {socket.errors[0][0] for socket, code in unknown if code == 4029} == {"too_many_connections"}
    # Each socket let in steps aside at most once for a newer one: the rows are bounded by the limit.
    assert SessionEvent.objects.filter(session=session, name="other_tab").count() <= 20
    assert "Exception inside application" not in server.log()


def test_one_sockets_burst_does_not_lower_the_capture_rate_of_the_others(
    acme, celery_worker, asgi_server, face_jpegs
):
    """The report: one socket's 300-frame burst throttled every socket of the process for 3-5 s. Now the
    burst is the flooder's alone: most of it is refused to it (rate_limited, seq null: it may resend later),
    the frames it may send are stored, and the honest sockets are never asked to slow down."""
    honest = [new_viewer(acme.study, f"honest-{i}") for i in range(2)]
    flooder = new_viewer(acme.study, "flooder")
    ad = acme.ad.pk

    async def stream(socket: Socket, frames: int) -> None:
        for seq in range(frames):
            await socket.send_frame(seq, ad, face_jpegs[seq % 12])
            await asyncio.sleep(0.2)

    async def scenario():
        sockets = [await Socket.open(asgi_server, session.token) for session in honest]
        for socket in sockets:
            await socket.hello()
        flood = await Socket.open(asgi_server, flooder.token)
        await flood.hello()
        streams = [asyncio.create_task(stream(socket, 45)) for socket in sockets]
        await asyncio.sleep(2.0)
        for seq in range(300):  # the burst, as fast as the socket takes it
            await flood.send_frame(seq, ad, face_jpegs[seq % 12], media_ms=0)
        await asyncio.gather(*streams)
        for socket in sockets:
            assert await socket.wait_for(lambda s=socket: s.acked >= set(range(45)), 60), socket.messages[-3:]
        assert await flood.wait_for(lambda: len(flood.acked) + len(flood.errors) >= 300, 60)
        for socket in [*sockets, flood]:
            await socket.close()
        return sockets, flood

    sockets, flood = asyncio.run(scenario())
    for socket in sockets:
        assert all(fps >= 5 for fps in socket.throttles), socket.throttles  # never told to slow down
        assert not socket.errors
    assert flood.close_code != 4008  # a burst is refused, not punished
    assert set(flood.errors) == {(RATE_LIMITED, None)}
    assert 30 <= len(flood.acked) <= 150 and len(flood.acked) + len(flood.errors) == 300
    assert len(wait_for_stored(flooder, len(flood.acked))) == len(flood.acked)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_socket_limits_follow_the_flow_scale_and_tell_a_flood_from_a_burst():
    clock = FakeClock()
    limits = SocketLimits(
        fps=5,
        frames=TokenBucket(15, 30, clock),
        events=TokenBucket(0.5, 20, clock),
        refusals=TokenBucket(10, REFUSAL_BUDGET, clock),
    )
    allowed = 0
    for _ in range(100):
        try:
            limits.check_frame_rate()
            allowed += 1
        except FrameRejected as refused:
            assert (refused.code, refused.seq) == (RATE_LIMITED, None)
            assert not limits.is_flood_after(refused)  # a refused burst is no flood
    assert allowed == 30
    limits.set_flow_scale(0.2)  # flow control asks for a fifth of the rate: so does the limit (3 frames/s)
    clock.now += 1.0
    assert sum(_allowed(limits) for _ in range(20)) == 3
    # Refusals beyond the budget, and frames refused for good beyond MAX_REJECTIONS, are a flood.
    refused = FrameRejected(RATE_LIMITED, "slow down")
    assert sum(limits.is_flood_after(refused) for _ in range(REFUSAL_BUDGET)) > 0
    bad = FrameRejected("not_jpeg", "not a JPEG", 7)
    assert [limits.is_flood_after(bad) for _ in range(MAX_REJECTIONS + 1)][-2:] == [False, True]


def _allowed(limits: SocketLimits) -> bool:
    try:
        limits.check_frame_rate()
        return True
    except FrameRejected:
        return False
