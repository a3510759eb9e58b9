"""The capture socket against a real database, with the embedded (thread) analysis backend."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from inference.pipeline import get_pipeline
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.readings import READING_LABELS
from research_portal.capture.routing import capture_socket_path, websocket_urlpatterns
from research_portal.capture.wire import FRAME_HEADER
from tests.support.polling import eventually_async

pytestmark = pytest.mark.django_db(transaction=True)

application = URLRouter(websocket_urlpatterns)


@pytest.fixture(autouse=True)
def embedded_backend(deployment_mode, settings):
    deployment_mode.embedded()
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.2


@pytest.fixture
def viewing_session(acme) -> ParticipantSession:
    return ParticipantSession.objects.create(
        study=acme.study,
        country="DE",
        external_participant_id="p-1",
        state=ParticipantSession.State.CONSENTED,
        checks_passed_at=timezone.now(),
        ad_sequence=[acme.ad.pk],
    )


def frame(seq: int, ad_id: int, jpeg: bytes, media_ms: int | None = None) -> bytes:
    media_ms = seq * 200 if media_ms is None else media_ms
    return FRAME_HEADER.pack(seq, ad_id, media_ms, time.time() * 1000) + jpeg


async def connect(token: str) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(application, capture_socket_path(token))
    connected, _ = await communicator.connect()
    assert connected
    return communicator, json.loads(await communicator.receive_from(timeout=5))


async def receive_until_closed(
    communicator: WebsocketCommunicator, timeout: float = 5
) -> tuple[list[dict], int]:
    """Messages until the server closes the socket, and its close code; then the client side disconnects
    too, so the consumer's tasks end inside the test instead of hanging the event loop's shutdown."""
    messages = []
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            await communicator.disconnect()
            return messages, output.get("code")
        messages.append(json.loads(output["text"]))


async def collect_acks(communicator: WebsocketCommunicator, expected: int) -> set[int]:
    acked: set[int] = set()
    while len(acked) < expected:
        message = json.loads(await communicator.receive_from(timeout=10))
        assert message["type"] == "ack", message
        acked.update(message["seqs"])
    return acked


async def wait_for_rows(session: ParticipantSession, expected: int, timeout: float = 30) -> list[FrameResult]:
    query = database_sync_to_async(lambda: list(FrameResult.objects.filter(session=session).order_by("seq")))
    return await eventually_async(query, until=lambda rows: len(rows) >= expected, timeout_s=timeout)


async def test_frames_are_acked_analysed_and_stored(acme, viewing_session, face_jpegs):
    communicator, hello = await connect(viewing_session.token)
    assert hello == {
        "type": "hello",
        "session": "viewing",
        "fps": 5,
        "max_frame_bytes": 256 * 1024,
        "next_seq": 0,
        "resend_after_s": 5.0,  # resend a frame unacked this long (CAPTURE_RESEND_AFTER_S)
    }
    for seq, jpeg in enumerate(face_jpegs[:6]):
        await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, jpeg))
    assert await collect_acks(communicator, 6) == set(range(6))
    rows = await wait_for_rows(viewing_session, 6)
    await communicator.disconnect()

    assert [row.seq for row in rows] == list(range(6))
    assert all(row.face_found for row in rows)
    labels = get_pipeline().labels
    for row in rows:
        # the model's own labels are stored, and only they: the others stay NULL
        assert {label for label in READING_LABELS if getattr(row, label) is not None} == set(labels)
        assert sum(getattr(row, label) for label in labels) == pytest.approx(1.0, abs=1e-3)
        assert row.model_version and row.face_w > 40 and row.media_time_ms == row.seq * 200
    state = await database_sync_to_async(
        lambda: ParticipantSession.objects.get(pk=viewing_session.pk).state
    )()
    assert state == "viewing"


async def test_resent_frames_are_stored_once(acme, viewing_session, face_jpegs):
    for _ in range(2):  # a reconnect resends everything not yet acked
        communicator, _ = await connect(viewing_session.token)
        for seq in range(3):
            await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, face_jpegs[seq]))
        await collect_acks(communicator, 3)
        await communicator.disconnect()
    await wait_for_rows(viewing_session, 3)
    await asyncio.sleep(1.0)  # give a wrongly duplicated insert the time to land
    assert await database_sync_to_async(FrameResult.objects.filter(session=viewing_session).count)() == 3


async def test_frames_resent_after_a_reconnect_are_acked_without_running_the_model_again(
    acme, viewing_session, face_jpegs, model_calls, settings
):
    settings.CAPTURE_RESEND_AFTER_S = 7
    communicator, hello = await connect(viewing_session.token)
    assert hello["resend_after_s"] == 7  # how long the client waits for an ack before resending
    for seq in range(3):
        await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, face_jpegs[seq]))
    assert await collect_acks(communicator, 3) == {0, 1, 2}
    await communicator.disconnect()
    # The acks were lost on the way (the page reloaded): the client resends 0-2 and goes on with 3.
    communicator, hello = await connect(viewing_session.token)
    assert hello["next_seq"] == 3
    for seq in range(4):
        await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, face_jpegs[seq]))
    assert await collect_acks(communicator, 4) == {0, 1, 2, 3}
    await communicator.disconnect()
    assert model_calls == face_jpegs[:4]  # 0-2 once, then only the new frame 3
    assert len(await wait_for_rows(viewing_session, 4)) == 4


async def test_bad_frames_get_error_messages_and_good_ones_still_land(acme, viewing_session, face_jpegs):
    communicator, _ = await connect(viewing_session.token)
    await communicator.send_to(bytes_data=b"\x01\x02")
    await communicator.send_to(bytes_data=frame(1, acme.ad.pk, b"GIF89a" + b"\x00" * 50))
    await communicator.send_to(bytes_data=frame(2, acme.other_ad.pk, face_jpegs[0]))
    await communicator.send_to(bytes_data=frame(3, acme.ad.pk, face_jpegs[0], media_ms=4_000_000))
    await communicator.send_to(bytes_data=frame(4, acme.ad.pk, face_jpegs[0] + b"\x00" * 300_000))
    await communicator.send_to(text_data="hello?")
    await communicator.send_to(bytes_data=frame(5, acme.ad.pk, face_jpegs[1]))
    errors = [json.loads(await communicator.receive_from(timeout=5)) for _ in range(6)]
    assert [(e["code"], e["seq"]) for e in errors] == [
        ("bad_header", None),
        ("not_jpeg", 1),
        ("unknown_ad", 2),
        ("bad_time", 3),
        ("too_large", 4),
        ("bad_message", None),
    ]
    assert await collect_acks(communicator, 1) == {5}
    rows = await wait_for_rows(viewing_session, 1)
    await communicator.disconnect()
    assert [row.seq for row in rows] == [5]


async def test_unknown_token_is_closed_with_4001():
    communicator, error = await connect("not-a-real-token")
    assert error["code"] == "unknown_session"
    assert (await receive_until_closed(communicator))[1] == 4001


@pytest.mark.parametrize("state", ["completed", "declined", "started"])
async def test_session_not_capturing_is_closed_with_4003(acme, state):
    session = await database_sync_to_async(ParticipantSession.objects.create)(study=acme.study, state=state)
    communicator, error = await connect(session.token)
    assert error["code"] == "session_closed"
    assert (await receive_until_closed(communicator))[1] == 4003


async def test_flood_of_garbage_closes_with_4008_without_disturbing_another_session(
    acme, viewing_session, face_jpegs
):
    other = await database_sync_to_async(ParticipantSession.objects.create)(
        study=acme.study, state=ParticipantSession.State.VIEWING, checks_passed_at=timezone.now()
    )
    honest, _ = await connect(other.token)
    flooder, _ = await connect(viewing_session.token)
    for seq in range(60):
        await flooder.send_to(bytes_data=frame(seq, acme.ad.pk, b"not a jpeg"))
    messages, code = await receive_until_closed(flooder)
    assert code == 4008
    assert {m["code"] for m in messages} == {"not_jpeg"}

    await honest.send_to(bytes_data=frame(0, acme.ad.pk, face_jpegs[0]))
    assert await collect_acks(honest, 1) == {0}
    assert len(await wait_for_rows(other, 1)) == 1
    await honest.disconnect()


async def test_rate_limit_rejects_frames_beyond_the_burst(acme, viewing_session, face_jpegs, settings):
    settings.CAPTURE_FRAME_BURST = 5
    settings.CAPTURE_FRAME_RATE_FACTOR = 0.01  # hardly refills during the test, however slow the machine
    communicator, _ = await connect(viewing_session.token)
    for seq in range(8):
        await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, face_jpegs[seq % 4]))
    refusals = []
    acked: set[int] = set()
    while len(acked) < 5 or len(refusals) < 3:
        message = json.loads(await communicator.receive_from(timeout=10))
        if message["type"] == "ack":
            acked.update(message["seqs"])
        else:
            refusals.append((message["code"], message["seq"]))
    await communicator.disconnect()
    # seq null: not taken, the client keeps the frames and resends them later
    assert acked == set(range(5)) and refusals == [("rate_limited", None)] * 3


async def test_ack_means_stored_and_finish_closes_normally(acme, viewing_session, face_jpegs):
    communicator, _ = await connect(viewing_session.token)
    await communicator.send_to(bytes_data=frame(0, acme.ad.pk, face_jpegs[0]))
    assert await collect_acks(communicator, 1) == {0}
    # The ack is sent after the row is stored, so it is there the moment the client hears of it.
    assert await database_sync_to_async(FrameResult.objects.filter(session=viewing_session, seq=0).exists)()
    await communicator.send_to(text_data=json.dumps({"type": "finish"}))
    messages, code = await receive_until_closed(communicator)
    assert messages == [] and code == 1000


async def test_socket_before_the_camera_check_is_refused(acme):
    session = await database_sync_to_async(ParticipantSession.objects.create)(
        study=acme.study, state="consented"
    )
    communicator, error = await connect(session.token)
    assert error["code"] == "check_required"
    assert (await receive_until_closed(communicator))[1] == 4003


async def test_baseline_frames_are_stored_without_an_ad(acme, viewing_session, face_jpegs):
    communicator, _ = await connect(viewing_session.token)
    await communicator.send_to(bytes_data=frame(0, 0, face_jpegs[0], media_ms=1000))
    await communicator.send_to(bytes_data=frame(1, 0, face_jpegs[1], media_ms=9000))  # past the 5 s baseline
    replies = [json.loads(await communicator.receive_from(timeout=5)) for _ in range(2)]
    assert sorted(
        (reply["type"], reply.get("code"), reply.get("seq"), reply.get("seqs")) for reply in replies
    ) == [
        ("ack", None, None, [0]),
        ("error", "bad_time", 1, None),
    ]
    rows = await wait_for_rows(viewing_session, 1)
    await communicator.disconnect()
    assert rows[0].ad_id is None and rows[0].face_found


async def test_a_reloaded_page_continues_the_frame_numbering(acme, viewing_session, face_jpegs):
    communicator, hello = await connect(viewing_session.token)
    for seq in range(3):
        await communicator.send_to(bytes_data=frame(seq, acme.ad.pk, face_jpegs[seq]))
    await collect_acks(communicator, 3)
    await communicator.disconnect()
    communicator, hello = await connect(viewing_session.token)
    await communicator.disconnect()
    assert hello["next_seq"] == 3


async def test_page_events_are_recorded(acme, viewing_session):
    communicator, _ = await connect(viewing_session.token)
    for name in ("tab_hidden", "tab_visible", "camera_stopped", "not_an_event"):
        await communicator.send_to(
            text_data=json.dumps({"type": "event", "name": name, "ad_id": acme.ad.pk, "media_time_ms": 1500})
        )
    error = json.loads(await communicator.receive_from(timeout=5))
    await communicator.disconnect()
    assert error["code"] == "bad_message"
    events = await database_sync_to_async(
        lambda: list(
            SessionEvent.objects.filter(session=viewing_session).values_list("name", "ad_id", "media_time_ms")
        )
    )()
    assert events == [(name, acme.ad.pk, 1500) for name in ("tab_hidden", "tab_visible", "camera_stopped")]


async def test_a_second_tab_takes_over_and_the_first_is_told_why(acme, viewing_session, face_jpegs):
    first, _ = await connect(viewing_session.token)
    second, _ = await connect(viewing_session.token)
    messages, code = await receive_until_closed(first)
    assert code == 4009 and messages[-1]["code"] == "other_tab"
    await second.send_to(bytes_data=frame(0, acme.ad.pk, face_jpegs[0]))
    assert await collect_acks(second, 1) == {0}
    await second.disconnect()
    assert await database_sync_to_async(
        SessionEvent.objects.filter(session=viewing_session, name="other_tab").exists
    )()


async def test_frames_are_discarded_unless_the_study_opts_in(acme, viewing_session, face_jpegs, settings):
    from pathlib import Path

    frames_root = Path(settings.MEDIA_ROOT) / "frames" / str(viewing_session.pk)
    communicator, _ = await connect(viewing_session.token)
    await communicator.send_to(bytes_data=frame(0, acme.ad.pk, face_jpegs[0]))
    await collect_acks(communicator, 1)
    await wait_for_rows(viewing_session, 1)
    await communicator.disconnect()
    assert not frames_root.exists()

    acme.study.store_frames = True
    await database_sync_to_async(acme.study.save)()
    communicator, _ = await connect(viewing_session.token)
    await communicator.send_to(bytes_data=frame(1, acme.ad.pk, face_jpegs[1]))
    await collect_acks(communicator, 1)
    await wait_for_rows(viewing_session, 2)
    await communicator.disconnect()
    assert (frames_root / "1.jpg").read_bytes() == face_jpegs[1]


async def test_a_finished_viewing_takes_no_more_frames(acme, viewing_session):
    viewing_session.viewing_ended_at = timezone.now()
    await database_sync_to_async(viewing_session.save)()
    communicator, error = await connect(viewing_session.token)
    assert error["code"] == "session_closed"
    assert (await receive_until_closed(communicator))[1] == 4003
