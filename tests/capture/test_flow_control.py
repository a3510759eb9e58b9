"""Backpressure: the load numbers, the capture-rate decision, and a socket told to slow down and to wait."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from research_portal.capture import flow
from research_portal.capture.flow import (
    CaptureLoad,
    next_fps_scale,
    queue_is_full,
    read_capture_load,
    resend_after_s,
)
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.queueing import analysis_backend, enqueue_frames
from research_portal.capture.routing import capture_socket_path, websocket_urlpatterns
from research_portal.capture.wire import FRAME_HEADER, Frame
from tests.support.polling import eventually, eventually_async

application = URLRouter(websocket_urlpatterns)


def load(backlog_s: float, queued_fps: float = 100.0, stored_fps: float = 50.0, queue_frames: int = 0):
    return CaptureLoad(
        queue_batches=queue_frames // 32,
        queue_frames=queue_frames,
        queued_fps=queued_fps,
        stored_fps=stored_fps,
        failed_fps=0.0,
        workers=1,
        worker_processes=2,
        backlog_s=backlog_s,
    )


def test_rate_drops_towards_what_the_workers_store_when_the_backlog_grows():
    # Workers store 80% of what arrives: the rate drops to 0.9 x 0.8 of the current one (room to drain).
    assert next_fps_scale(1.0, load(backlog_s=5.0, queued_fps=100, stored_fps=80)) == pytest.approx(0.72)
    assert next_fps_scale(0.5, load(backlog_s=5.0, queued_fps=100, stored_fps=80)) == pytest.approx(0.36)
    # Never more than halved in one step, never below the floor, and nothing stored at all = halve.
    assert next_fps_scale(1.0, load(backlog_s=float("inf"), stored_fps=0.0)) == 0.5
    assert next_fps_scale(0.25, load(backlog_s=float("inf"), stored_fps=0.0)) == 0.2


def test_rate_holds_between_the_marks_and_grows_back_when_drained():
    assert next_fps_scale(0.5, load(backlog_s=1.0)) == 0.5
    assert next_fps_scale(0.5, load(backlog_s=0.0)) == 0.625
    assert next_fps_scale(0.9, load(backlog_s=0.0)) == 1.0


def test_clients_wait_longer_before_resending_while_frames_wait_long_in_the_queue(settings):
    settings.CAPTURE_RESEND_AFTER_S = 5
    settings.CAPTURE_MAX_RESEND_AFTER_S = 30
    assert resend_after_s(load(backlog_s=0.0)) == 5  # normal: the client's own default
    assert resend_after_s(load(backlog_s=2.4)) == 5
    assert resend_after_s(load(backlog_s=4.2)) == 9  # twice the backlog, in whole seconds
    assert resend_after_s(load(backlog_s=60.0)) == 30
    assert resend_after_s(load(backlog_s=float("inf"))) == 30  # queued, nothing stored lately


def test_queue_bound(settings):
    settings.CAPTURE_MAX_QUEUE_FRAMES = 100
    assert not queue_is_full(load(0, queue_frames=99))
    assert queue_is_full(load(0, queue_frames=100))


def test_load_read_from_redis_counters_queue_and_heartbeats(redis_flow):
    store = flow.flow_counters()
    now = int(time.time())
    # The ten finished seconds, and the next two in case the clock ticks before the read: 60 frames/s queued,
    # 40 stored, 1 failed.
    for second in range(now - 10, now + 3):
        store.add({"queued_frames": 60, "queued_batches": 3, "stored_frames": 40, "failed_frames": 1}, second)
    store.add({"queued_frames": 999}, now - 30)  # outside the window
    redis_flow.rpush("flow-test-queue", *[b"batch"] * 5)  # 5 batches of 20 frames waiting
    store.heartbeat("node-a", 1, time.time())
    store.heartbeat("node-b", 1, time.time())
    store.heartbeat("node-dead", 8, time.time() - 60)

    current = read_capture_load(analysis_backend())

    assert (current.queued_fps, current.stored_fps, current.failed_fps) == (60.0, 40.0, 1.0)
    assert (current.queue_batches, current.queue_frames) == (5, 100)
    assert current.backlog_s == pytest.approx(2.5)
    assert (current.workers, current.worker_processes) == (2, 2)
    assert set(redis_flow.hkeys("portal:flow:workers")) == {b"node-a", b"node-b"}  # the dead one forgotten

    # Two batches per worker process waiting is pipelining, not a backlog.
    redis_flow.ltrim("flow-test-queue", 0, 3)
    assert read_capture_load(analysis_backend()).backlog_s == 0.0


def test_the_backlog_is_measured_against_what_busy_workers_store_not_the_demand(redis_flow):
    """Workers keeping up with 40 frames/s were busy 1 s of every 10 (two processes, 0.5 s each): they
    can store 2 x 400 frames / 1 s = 800 frames/s, so 5 batches of 20 frames wait 0.125 s, not 2.5 s."""
    store = flow.flow_counters()
    now = int(time.time())
    for second in range(now - 10, now + 3):
        store.add({"queued_frames": 60, "queued_batches": 3, "stored_frames": 40, "busy_us": 100_000}, second)
    redis_flow.rpush("flow-test-queue", *[b"batch"] * 5)
    store.heartbeat("node-a", 1, time.time())
    store.heartbeat("node-b", 1, time.time())

    current = read_capture_load(analysis_backend())

    assert current.capacity_fps == pytest.approx(800.0)
    assert current.backlog_s == pytest.approx(100 / 800)
    assert next_fps_scale(1.0, current) == 1.0  # no throttle for a queue the workers drain in 0.1 s


def test_saturated_workers_capacity_is_what_they_store():
    assert flow.worker_capacity_fps(40.0, 400, busy_s=20.0, processes=2) == 40.0  # busy all 10 s, both
    assert flow.worker_capacity_fps(40.0, 400, busy_s=25.0, processes=2) == 40.0  # not below the stored rate
    assert flow.worker_capacity_fps(40.0, 400, busy_s=5.0, processes=2) == 160.0
    assert flow.worker_capacity_fps(40.0, 400, busy_s=0.0, processes=2) == 40.0  # workers that do not say


def test_a_throttle_steps_towards_the_workers_capacity_not_their_recent_demand():
    idle_workers = replace(load(backlog_s=5.0, queued_fps=100, stored_fps=20), capacity_fps=80.0)
    assert next_fps_scale(1.0, idle_workers) == pytest.approx(0.72)  # 0.9 x 80/100, as if they stored 80


def test_a_real_worker_says_it_is_alive_and_counts_what_it_stores(
    acme, celery_worker, face_jpegs, redis_url, deployment_mode
):
    deployment_mode.production(redis_url)
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    now_ms = time.time() * 1000
    enqueue_frames(
        [
            Frame(i, acme.ad.pk, i * 200, now_ms, jpeg).queued(session.pk)
            for i, jpeg in enumerate(face_jpegs[:6])
        ]
    )
    current = eventually(
        lambda: read_capture_load(analysis_backend()),
        until=lambda load: load.workers >= 1 and FrameResult.objects.filter(session=session).count() == 6,
        timeout_s=60,
        interval_s=0.5,
    )
    assert current.workers >= 1 and current.worker_processes >= 1, celery_worker.log()[-2000:]
    time.sleep(1.1)  # the second in which the batch was stored must end to enter the window
    assert read_capture_load(analysis_backend()).stored_fps > 0


@pytest.fixture
def embedded_flow(deployment_mode, settings):
    """Embedded mode with flow control that reacts in a fifth of a second."""
    deployment_mode.embedded()
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.05
    settings.CAPTURE_FLUSH_MAX_FRAMES = 1  # a batch per frame, so queue depth counts frames here
    settings.CAPTURE_FLOW_INTERVAL_S = 0.2
    settings.CAPTURE_MAX_QUEUE_FRAMES = 3


@pytest.mark.django_db(transaction=True)
async def test_stalled_workers_slow_the_client_then_refuse_frames_and_nothing_is_lost(
    acme, face_jpegs, embedded_flow
):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(ParticipantSession.objects.create)(
        study=acme.study,
        state=ParticipantSession.State.CONSENTED,
        checks_passed_at=timezone.now(),
        ad_sequence=[acme.ad.pk],
    )
    # Stall the analysis: the only pool thread waits until released.
    release = threading.Event()
    analysis_backend().executor.submit(release.wait, 60)

    communicator = WebsocketCommunicator(application, capture_socket_path(session.token))
    assert (await communicator.connect())[0]
    assert json.loads(await communicator.receive_from(timeout=5))["type"] == "hello"

    throttles: list[float] = []
    resend_hints: list[float] = []
    busy = 0
    acked: set[int] = set()

    async def drain(timeout: float) -> None:
        nonlocal busy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # (receive_from's timeout would cancel the consumer; receive_nothing only looks.)
            if await communicator.receive_nothing(timeout=0.05):
                continue
            message = json.loads(await communicator.receive_from())
            if message["type"] == "throttle":
                throttles.append(message["fps"])
                resend_hints.append(message["resend_after_s"])
            elif message["type"] == "ack":
                acked.update(message["seqs"])
            elif message["type"] == "error":
                assert message["code"] == "server_busy" and message["seq"] is None, message
                busy += 1

    sent = []
    for seq in range(12):
        header = FRAME_HEADER.pack(seq, acme.ad.pk, seq * 200, time.time() * 1000)
        await communicator.send_to(bytes_data=header + face_jpegs[seq % len(face_jpegs)])
        sent.append(seq)
        await drain(0.15)

    assert throttles and min(throttles) < 5, throttles  # told to slow down while nothing was stored
    assert max(resend_hints) == 30, resend_hints  # and not to resend what waits in the queue meanwhile
    assert busy > 0  # and, with the queue at its bound, to hold frames back
    assert not acked  # nothing is acked before it is stored

    release.set()
    refused = set(sent) - acked
    # The client resends what was refused; every frame is then stored exactly once and acked.
    await drain(2.0)
    for seq in sorted(set(sent) - acked):
        header = FRAME_HEADER.pack(seq, acme.ad.pk, seq * 200, time.time() * 1000)
        await communicator.send_to(bytes_data=header + face_jpegs[seq % len(face_jpegs)])
        await drain(0.1)
    await eventually_async(lambda: drain(0.5), until=lambda _: acked == set(sent), timeout_s=30, interval_s=0)
    # Drained: the rate grows back to the study's.
    await eventually_async(lambda: drain(0.3), until=lambda _: throttles[-1] >= 5, timeout_s=10, interval_s=0)
    await communicator.disconnect()

    assert refused, "some frames should have been refused while the queue was full"
    assert acked == set(sent)
    seqs = await database_sync_to_async(
        lambda: list(FrameResult.objects.filter(session=session).values_list("seq", flat=True))
    )()
    assert sorted(seqs) == sent  # stored once each
    assert throttles[-1] == 5
    assert resend_hints[-1] == 5  # back to the client's default
