"""The capture socket survives any message.

Text is bounded in size and nesting before it is parsed; anything unexpected inside the consumer closes the
socket with 1011 and runs its clean-up (the batcher and /metrics forget it); after the server closed a
socket (4008 flood, 1000 finish), messages still on their way are dropped without a word in the log.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from research_portal.capture.batching import frame_batcher
from research_portal.capture.models import SessionEvent
from research_portal.capture.routing import capture_socket_path
from research_portal.capture.wire import MAX_TEXT_CHARS, parse_text_message
from research_portal.ops.views import web_process_state
from tests.capture.test_frame_path_hardening import (
    Socket,
    application,
    frame_message,
    open_socket,
)
from tests.support.processes import free_port
from tests.support.readings import new_viewer
from tests.support.services import service_env, start_daphne

METRICS_TOKEN = "robustness-metrics-7d2e"
HOSTILE_TEXTS = [
    "[" * 100_000 + "]" * 100_000,  # the report: RecursionError in json.loads
    '{"type": "event", "name": ' + "[" * 400 + "]" * 400 + "}",
    "x" * (MAX_TEXT_CHARS + 1),
    "\x00\x01\x02",
    "null",
    '{"type": 7}',
]


def metrics_sockets(base_url: str) -> int:
    request = urllib.request.Request(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["web_process"]["capture_sockets"]


def error_lines(log: str) -> list[dict]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] in {"ERROR", "CRITICAL"}]


def test_hostile_text_and_a_flood_never_leave_a_dead_socket_or_an_error_in_the_log(
    acme, postgres, redis_url, tmp_path, face_jpegs
):
    env = {**service_env(postgres, redis_url), "PORTAL_METRICS_TOKEN": METRICS_TOKEN, "LOG_FORMAT": "json"}
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    base = f"http://127.0.0.1:{port}"
    calm, flooder = new_viewer(acme.study, "calm"), new_viewer(acme.study, "flooder")
    odd_event = json.dumps(
        {"type": "event", "name": "tab_hidden", "ad_id": [acme.ad.pk], "media_time_ms": True}
    )

    async def scenario() -> tuple[Socket, Socket, list[int]]:
        socket = await Socket.open(base, calm.token)
        await socket.hello()
        for text in HOSTILE_TEXTS:
            await socket.ws.send(text)
        await socket.ws.send(odd_event)  # an ad id no dict can look up: recorded without it
        assert await socket.wait_for(lambda: len(socket.errors) >= len(HOSTILE_TEXTS)), socket.messages
        open_sockets = [await asyncio.to_thread(metrics_sockets, base)]
        await socket.ws.send(json.dumps({"type": "finish"}))  # still listening: closes normally
        assert await socket.closed() == 1000
        await asyncio.sleep(0.5)
        open_sockets.append(await asyncio.to_thread(metrics_sockets, base))

        # A flood: 60 bad frames, then more frames and text already on the way when the server closes.
        flood = await Socket.open(base, flooder.token)
        await flood.hello()
        for seq in range(60):
            await flood.ws.send(frame_message(seq, acme.ad.pk, b"not a jpeg"))
        for seq in range(60, 160):
            await flood.ws.send(frame_message(seq, acme.ad.pk, face_jpegs[seq % 12]))
        for _ in range(20):
            await flood.ws.send(odd_event)
        code = await flood.closed()
        await asyncio.sleep(1.0)  # whatever the server would still log about the queued messages
        open_sockets.append(await asyncio.to_thread(metrics_sockets, base))
        return socket, flood, [*open_sockets, code]

    try:
        socket, flood, (open_then, open_after_finish, open_after_flood, flood_code) = asyncio.run(scenario())
    finally:
        server.stop()
    assert socket.errors == [("bad_message", None)] * len(HOSTILE_TEXTS)
    assert (open_then, open_after_finish, open_after_flood) == (1, 0, 0)  # the clean-up ran each time
    assert flood_code == 4008
    assert {code for code, _ in flood.errors} == {"not_jpeg"}  # nothing after the 51st
    assert error_lines(server.log()) == [], server.log()[-4000:]
    events = list(SessionEvent.objects.filter(session=calm).values_list("name", "ad_id", "media_time_ms"))
    assert events == [("tab_hidden", None, None)]


def test_text_is_bounded_in_size_and_nesting_before_it_is_parsed():
    assert parse_text_message('{"type": "finish"}') == {"type": "finish"}
    assert parse_text_message('{"type": "event", "name": "[[[[{{{{"}')["name"] == "[[[[{{{{"  # in a string
    for text in [*HOSTILE_TEXTS, '{"type": "event", "x": [[1]]}', "[]", '"finish"', "{"]:
        with pytest.raises(Exception) as caught:
            parse_text_message(text)
        assert getattr(caught.value, "code", None) == "bad_message", text[:40]


@pytest.fixture
def embedded(deployment_mode):
    deployment_mode.embedded()


def broken(*args, **kwargs):
    raise RuntimeError("a fault inside the consumer")


@pytest.mark.django_db(transaction=True)
async def test_an_exception_inside_the_consumer_closes_the_socket_with_1011_and_cleans_up(
    acme, embedded, monkeypatch, caplog
):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    communicator, _ = await open_socket(session.token)
    batcher = frame_batcher()
    assert len(batcher.sockets) == 1 and web_process_state()["capture_sockets"] == 1
    monkeypatch.setattr("research_portal.capture.consumers.parse_page_event", broken)
    await communicator.send_to(text_data=json.dumps({"type": "event", "name": "tab_hidden"}))
    output = await communicator.receive_output(timeout=10)
    assert output == {"type": "websocket.close", "code": 1011}
    assert not batcher.sockets and not batcher.sockets_by_session
    assert web_process_state()["capture_sockets"] == 0
    assert "capture socket failed" in caplog.text
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_an_exception_while_connecting_closes_with_1011(acme, embedded, monkeypatch):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    monkeypatch.setattr("research_portal.capture.consumers.open_capture", broken)
    communicator = WebsocketCommunicator(application, capture_socket_path(session.token))
    connected, _ = await communicator.connect()
    assert connected  # accepted first, so that the close code reaches the browser (it reconnects on 1011)
    assert await communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 1011}
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_messages_after_the_server_closed_the_socket_are_dropped(acme, face_jpegs, embedded, caplog):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    communicator, _ = await open_socket(session.token)
    await communicator.send_to(text_data=json.dumps({"type": "finish"}))
    await communicator.send_to(text_data="[" * 1000)
    await communicator.send_to(bytes_data=bytes(10))
    assert await communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 1000}
    assert await communicator.receive_nothing(timeout=0.5)  # no error message for what came after
    await communicator.disconnect()
    assert "frame rejected" not in caplog.text and "ERROR" not in caplog.text
