"""One session's frames can never stop the frame path of a web process.

Every integer of a frame's header is bounded by its column (and seq by what the session can have
numbered), so the repro (seq 0xFFFFFFFF) is refused at the socket. Behind that, a failure caused by the
data (DataError, IntegrityError, a value no row holds), on the web side or in the worker, refuses only the
frames at fault (`unstorable`, to their own socket) while the rest of their batch is stored; only transient
failures (database or broker unreachable) keep frames back to be retried.

Real services throughout: daphne + a Celery worker + Postgres + Redis for the repro, real Postgres data
errors (the bounds lifted in-process to let the bad values through) for the isolation.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from research_portal.capture.acks import decode_ack_message, new_inbox_name
from research_portal.capture.analysis import analyze_and_store_frames
from research_portal.capture.batching import frame_batcher
from research_portal.capture.failures import is_transient
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.routing import capture_socket_path, websocket_urlpatterns
from research_portal.capture.wire import FRAME_HEADER, MAX_WIRE_INT, SEQ_HEADROOM, Frame, QueuedFrame
from tests.support.polling import eventually, eventually_async
from tests.support.readings import new_viewer

application = URLRouter(websocket_urlpatterns)


# ---- helpers (also used by the other test_frame_* files) ---------------------------------------------------


def viewer_of_another_organisation() -> tuple[ParticipantSession, int]:
    """A participant of another organisation's live study, and its ad's id (the socket never reads the
    video file)."""
    from research_portal.accounts.models import Organization
    from research_portal.studies.models import Ad, Study

    study = Study.objects.create(
        organization=Organization.objects.create(name="Other Research"), name="Winter", status="live"
    )
    ad = Ad.objects.create(study=study, title="Winter ad", video="ads/winter.webm", duration_ms=60_000)
    session = ParticipantSession.objects.create(
        study=study,
        state=ParticipantSession.State.CONSENTED,
        checks_passed_at=timezone.now(),
        ad_sequence=[ad.pk],
    )
    return session, ad.pk


def frame_message(seq: int, ad_id: int, jpeg: bytes, media_ms: int | None = None) -> bytes:
    media_ms = (seq % 20) * 200 if media_ms is None else media_ms
    return FRAME_HEADER.pack(seq, ad_id, media_ms, time.time() * 1000) + jpeg


class Socket:
    """A capture socket to a real server, recording everything the server says."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.messages: list[dict] = []
        self.acked: set[int] = set()
        self.errors: list[tuple[str, int | None]] = []
        self.throttles: list[float] = []
        self.close_code: int | None = None
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, base_url: str, token: str) -> Socket:
        url = base_url.replace("http://", "ws://") + capture_socket_path(token)
        ws = await ws_connect(url, origin=base_url, open_timeout=20, max_size=None, compression=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.messages.append(message)
                if message["type"] == "ack":
                    self.acked.update(message["seqs"])
                elif message["type"] == "error":
                    self.errors.append((message["code"], message["seq"]))
                elif message["type"] == "throttle":
                    self.throttles.append(message["fps"])
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def hello(self, timeout: float = 20) -> dict:
        assert await self.wait_for(lambda: any(m["type"] == "hello" for m in self.messages), timeout), (
            self.messages,
            self.close_code,
        )
        return next(m for m in self.messages if m["type"] == "hello")

    async def wait_for(self, condition, timeout: float = 30) -> bool:
        """Until `condition()` holds, the socket is closed (nothing more will arrive) or `timeout` passes."""

        async def check() -> bool:
            return condition()

        await eventually_async(
            check, lambda met: met or self.reader.done(), timeout_s=timeout, interval_s=0.05
        )
        return condition()

    async def closed(self, timeout: float = 20) -> int | None:
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.close_code

    async def send_frame(self, seq: int, ad_id: int, jpeg: bytes, media_ms: int | None = None) -> None:
        await self.ws.send(frame_message(seq, ad_id, jpeg, media_ms))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)


def stored_seqs(session: ParticipantSession) -> list[int]:
    return list(FrameResult.objects.filter(session=session).order_by("seq").values_list("seq", flat=True))


def wait_for_stored(session: ParticipantSession, expected: int, timeout: float = 60) -> list[int]:
    return eventually(
        lambda: stored_seqs(session), until=lambda seqs: len(seqs) >= expected, timeout_s=timeout
    )


# ---- the repro, on the production path ---------------------------------------------------------------------


def test_seq_0xffffffff_is_refused_and_every_other_socket_of_the_process_keeps_getting_acks(
    acme, celery_worker, asgi_server, face_jpegs
):
    attacker, honest = new_viewer(acme.study, "attacker"), new_viewer(acme.study, "honest")
    late, late_ad = viewer_of_another_organisation()
    ad = acme.ad.pk

    async def scenario() -> tuple[Socket, Socket, Socket, dict]:
        bad = await Socket.open(asgi_server, attacker.token)
        await bad.hello()
        good = await Socket.open(asgi_server, honest.token)
        await good.hello()
        for seq in range(5):
            await good.send_frame(seq, ad, face_jpegs[seq % 12])
        assert await good.wait_for(lambda: good.acked >= set(range(5))), good.messages
        # The repro: one binary message with seq 0xFFFFFFFF (and the largest seq the column holds).
        await bad.send_frame(0xFFFFFFFF, ad, face_jpegs[0], media_ms=0)
        await bad.send_frame(MAX_WIRE_INT, ad, face_jpegs[0], media_ms=0)
        assert await bad.wait_for(lambda: len(bad.errors) >= 2), bad.messages
        # The honest socket streams on at 5 fps; a participant entering afterwards streams too.
        newcomer = await Socket.open(asgi_server, late.token)
        await newcomer.hello()
        for seq in range(5, 20):
            await good.send_frame(seq, ad, face_jpegs[seq % 12])
            await newcomer.send_frame(seq - 5, late_ad, face_jpegs[seq % 12])
            await asyncio.sleep(0.2)
        assert await good.wait_for(lambda: good.acked >= set(range(20)), 60), good.messages[-5:]
        assert await newcomer.wait_for(lambda: newcomer.acked >= set(range(15)), 60), newcomer.messages[-5:]
        # The attacker's own socket is not broken either, and reconnecting hands out a usable next_seq.
        await bad.send_frame(0, ad, face_jpegs[1])
        assert await bad.wait_for(lambda: 0 in bad.acked), bad.messages
        await bad.close()
        again = await Socket.open(asgi_server, attacker.token)
        hello = await again.hello()
        await again.send_frame(hello["next_seq"], ad, face_jpegs[2])
        assert await again.wait_for(lambda: hello["next_seq"] in again.acked), again.messages
        for socket in (good, newcomer, again):
            await socket.close()
        return bad, good, newcomer, hello

    bad, good, newcomer, hello = asyncio.run(scenario())
    assert bad.errors == [("bad_seq", 0xFFFFFFFF), ("bad_seq", MAX_WIRE_INT)]
    assert not good.errors and not newcomer.errors
    assert hello["next_seq"] == 1
    assert wait_for_stored(honest, 20) == list(range(20)), celery_worker.log()[-3000:]
    assert wait_for_stored(late, 15) == list(range(15))
    assert wait_for_stored(attacker, 2) == [0, 1]
    assert ParticipantSession.objects.get(pk=attacker.pk).last_enqueued_seq == 1


# ---- the numbering: never a next_seq the server then refuses ----------------------------------------------


@pytest.fixture
def embedded(deployment_mode, settings):
    deployment_mode.embedded()
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.1


async def open_socket(
    token: str, client: tuple[str, int] | None = None
) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(application, capture_socket_path(token))
    if client is not None:
        communicator.scope["client"] = client
    connected, _ = await communicator.connect()
    assert connected
    return communicator, json.loads(await communicator.receive_from(timeout=10))


async def replies(communicator: WebsocketCommunicator, count: int, timeout: float = 30) -> list[dict]:
    return [json.loads(await communicator.receive_from(timeout=timeout)) for _ in range(count)]


@pytest.mark.django_db(transaction=True)
async def test_after_seq_2_31_minus_1_and_a_reconnect_the_next_seq_is_accepted(acme, face_jpegs, embedded):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    ad = acme.ad.pk
    communicator, hello = await open_socket(session.token)
    assert hello["next_seq"] == 0
    await communicator.send_to(bytes_data=frame_message(MAX_WIRE_INT, ad, face_jpegs[0]))
    (refused,) = await replies(communicator, 1)
    assert (refused["type"], refused["code"], refused["seq"]) == ("error", "bad_seq", MAX_WIRE_INT)
    assert "beyond what this session can have reached" in refused["detail"]
    await communicator.disconnect()

    communicator, hello = await open_socket(session.token)
    assert hello["next_seq"] == 0  # nothing was queued: the refused seq left no trace
    # The furthest a client may jump right now is accepted, and a reconnect continues right after it...
    await communicator.send_to(bytes_data=frame_message(SEQ_HEADROOM, ad, face_jpegs[0]))
    assert (await replies(communicator, 1))[0] == {"type": "ack", "seqs": [SEQ_HEADROOM]}
    await communicator.disconnect()
    for _ in range(2):
        communicator, hello = await open_socket(session.token)
        next_seq = hello["next_seq"]
        # ...and from there on every next_seq handed out is taken (with headroom above it).
        await communicator.send_to(bytes_data=frame_message(next_seq + SEQ_HEADROOM, ad, face_jpegs[1]))
        assert (await replies(communicator, 1))[0] == {"type": "ack", "seqs": [next_seq + SEQ_HEADROOM]}
        await communicator.disconnect()
    assert next_seq == 2 * SEQ_HEADROOM + 2
    last = await database_sync_to_async(
        lambda: ParticipantSession.objects.get(pk=session.pk).last_enqueued_seq
    )()
    assert last == 3 * SEQ_HEADROOM + 2


# ---- a data error: only the frames at fault are refused, on the web side and in the worker ---------------


def lenient_parse_frame(message: bytes, context, now_ms=None) -> Frame:
    """parse_frame without any bound: lets values through that only the database refuses."""
    seq, ad_id, media_time_ms, capture_time_ms = FRAME_HEADER.unpack_from(message)
    return Frame(seq, ad_id, media_time_ms, capture_time_ms, message[FRAME_HEADER.size :])


async def collect(communicator: WebsocketCommunicator, acked: set, errors: list, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await communicator.receive_nothing(timeout=0.05):
            continue
        message = json.loads(await communicator.receive_from())
        if message["type"] == "ack":
            acked.update(message["seqs"])
        elif message["type"] == "error":
            errors.append((message["code"], message["seq"], message["detail"]))


@pytest.mark.django_db(transaction=True)
async def test_a_data_error_refuses_only_that_sessions_frames_and_the_rest_of_the_batch_is_stored(
    acme, face_jpegs, celery_worker, redis_url, deployment_mode, settings, monkeypatch, caplog
):
    """Bounds lifted in this (web) process, so the values reach Postgres: a seq the session's queued-seq
    column cannot hold fails the web side's record, a media time FrameResult cannot hold fails the
    worker's insert. Both in batches shared with an honest socket."""
    deployment_mode.production(redis_url)
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.5  # every frame below leaves in one batch
    monkeypatch.setattr("research_portal.capture.consumers.parse_frame", lenient_parse_frame)
    bad_session = await database_sync_to_async(new_viewer)(acme.study, "bad")
    good_session = await database_sync_to_async(new_viewer)(acme.study, "good")
    ad = acme.ad.pk
    bad, _ = await open_socket(bad_session.token)
    good, _ = await open_socket(good_session.token)
    bad_acked, bad_errors, good_acked, good_errors = set(), [], set(), []

    # Web side: the bad session's newest seq is 0xFFFFFFFF (DataError: integer out of range).
    await bad.send_to(bytes_data=frame_message(1, ad, face_jpegs[0]))
    await bad.send_to(bytes_data=frame_message(0xFFFFFFFF, ad, face_jpegs[1]))
    for seq in range(4):
        await good.send_to(bytes_data=frame_message(seq, ad, face_jpegs[seq]))
    for _ in range(60):
        await asyncio.gather(
            collect(bad, bad_acked, bad_errors, 0.25), collect(good, good_acked, good_errors, 0.25)
        )
        if len(bad_errors) >= 2 and good_acked >= set(range(4)):
            break
    assert good_acked == set(range(4)) and not good_errors
    assert not bad_acked
    assert sorted((code, seq) for code, seq, _ in bad_errors) == [
        ("unstorable", 1),
        ("unstorable", 0xFFFFFFFF),
    ]
    assert "could not store" in bad_errors[0][2]
    batcher = frame_batcher()
    assert not batcher.frames and batcher.oldest_frame_age_s() == 0.0  # nothing kept back for a retry

    # Worker side: a media time past the column (DataError in the worker's insert), beside good frames.
    bad_errors.clear()
    await bad.send_to(bytes_data=frame_message(2, ad, face_jpegs[2], media_ms=0xFFFFFFFF))
    await bad.send_to(bytes_data=frame_message(3, ad, face_jpegs[3]))
    for seq in range(4, 8):
        await good.send_to(bytes_data=frame_message(seq, ad, face_jpegs[seq]))
    for _ in range(120):
        await asyncio.gather(
            collect(bad, bad_acked, bad_errors, 0.25), collect(good, good_acked, good_errors, 0.25)
        )
        if bad_errors and 3 in bad_acked and good_acked >= set(range(8)):
            break
    await bad.disconnect()
    await good.disconnect()
    assert good_acked == set(range(8)) and not good_errors, celery_worker.log()[-3000:]
    assert [(code, seq) for code, seq, _ in bad_errors] == [("unstorable", 2)]
    assert bad_acked == {3}  # the bad frame's batch mate of the same session is stored too
    stored = await database_sync_to_async(
        lambda: {s.pk: stored_seqs(s) for s in (bad_session, good_session)}
    )()
    assert stored == {bad_session.pk: [3], good_session.pk: list(range(8))}
    assert "DataError" in celery_worker.log()  # the worker said why, and stored the rest


@pytest.mark.django_db(transaction=True)
async def test_in_embedded_mode_a_row_the_database_refuses_is_refused_to_its_socket_alone(
    acme, face_jpegs, embedded, monkeypatch
):
    monkeypatch.setattr("research_portal.capture.consumers.parse_frame", lenient_parse_frame)
    bad_session = await database_sync_to_async(new_viewer)(acme.study, "bad")
    good_session = await database_sync_to_async(new_viewer)(acme.study, "good")
    bad, _ = await open_socket(bad_session.token)
    good, _ = await open_socket(good_session.token)
    await bad.send_to(bytes_data=frame_message(0, acme.ad.pk, face_jpegs[0], media_ms=0xFFFFFFFF))
    await good.send_to(bytes_data=frame_message(0, acme.ad.pk, face_jpegs[1]))
    (refused,) = await replies(bad, 1)
    assert (refused["code"], refused["seq"]) == ("unstorable", 0)
    assert await replies(good, 1) == [{"type": "ack", "seqs": [0]}]
    assert frame_batcher().unstorable_frames == 1  # (/metrics `unstorable_frames`)
    await bad.disconnect()
    await good.disconnect()


def test_the_worker_stores_a_batch_around_rows_the_database_refuses(
    postgres, acme, face_jpegs, redis_url, deployment_mode
):
    """A frame whose media time no row holds, and frames of a session deleted since they were queued (a
    foreign key violation), in one batch with good frames: the good ones are stored and acked, the others
    refused to their sockets through the ack inbox."""
    deployment_mode.production(redis_url)
    good, other = new_viewer(acme.study, "good"), new_viewer(acme.study, "other")
    gone = new_viewer(acme.study, "gone")
    gone_id = gone.pk
    gone.delete()
    now_ms = time.time() * 1000

    def payload(session_id: int, seq: int, media_ms: int = 200) -> QueuedFrame:
        return Frame(seq, acme.ad.pk, media_ms, now_ms, face_jpegs[seq % 12]).queued(session_id)

    batch = [payload(good.pk, seq) for seq in range(3)]
    batch += [
        payload(other.pk, 0),
        payload(other.pk, 1, media_ms=2**32),
        payload(gone_id, 5),
        payload(gone_id, 6),
    ]
    batch += [payload(good.pk, 3)]
    inbox = new_inbox_name()

    assert analyze_and_store_frames(batch, inbox) == 5

    assert stored_seqs(good) == [0, 1, 2, 3] and stored_seqs(other) == [0]
    message = decode_ack_message(redis.Redis.from_url(redis_url).lpop(inbox))
    assert sorted((session_id, sorted(seqs)) for session_id, seqs in message.acks) == sorted(
        [(good.pk, [0, 1, 2, 3]), (other.pk, [0])]
    )
    assert sorted((r.session_id, r.seqs, r.code) for r in message.rejected) == sorted(
        [(other.pk, (1,), "unstorable"), (gone_id, (5, 6), "unstorable")]
    )


def test_transient_failures_are_told_apart_from_failures_caused_by_the_data():
    from django.db import DataError, IntegrityError, InterfaceError, OperationalError

    assert all(
        is_transient(error) for error in (OperationalError(), InterfaceError(), redis.ConnectionError())
    )
    assert not any(
        is_transient(error) for error in (DataError(), IntegrityError(), ValueError(), TypeError())
    )


@pytest.mark.django_db(transaction=True)
async def test_frames_are_kept_and_retried_while_the_broker_refuses_connections_then_stored(
    acme, face_jpegs, celery_worker, redis_url, deployment_mode, settings
):
    """The one kind of failure that holds frames back: the broker unreachable (a real refused connection).
    Once it answers, the kept frames are queued, stored and acked; none is lost or refused."""
    from tests.support.processes import free_port

    deployment_mode.production(redis_url)
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.1
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1")
    communicator, _ = await open_socket(session.token)
    await asyncio.sleep(0.5)  # the batcher's ack listener connects to the working Redis first
    # Batches cannot be written: refused at once (the listener keeps its connection to the working Redis).
    deployment_mode.production(f"redis://127.0.0.1:{free_port()}/0")
    for seq in range(3):
        await communicator.send_to(bytes_data=frame_message(seq, acme.ad.pk, face_jpegs[seq]))
    acked: set[int] = set()
    errors: list = []
    await collect(communicator, acked, errors, 2.0)
    batcher = frame_batcher()
    assert not acked and not errors
    assert len(batcher.frames) == 3 and batcher.oldest_frame_age_s() > 1.5
    deployment_mode.production(redis_url)
    deadline = time.monotonic() + 60
    while acked != {0, 1, 2} and time.monotonic() < deadline:
        await collect(communicator, acked, errors, 0.5)
    await communicator.disconnect()
    assert acked == {0, 1, 2} and not errors, celery_worker.log()[-3000:]
    assert batcher.oldest_frame_age_s() == 0.0
