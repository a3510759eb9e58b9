"""analyze_frame_batch_task through real Redis to a real Celery worker process, stored in real Postgres."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis
from django.db import connection

from inference.pipeline import reset_pipeline
from research_portal.capture.acks import new_inbox_name
from research_portal.capture.analysis import analyze_and_store_batch, analyze_and_store_frames
from research_portal.capture.batch_store import (
    BATCH_KEY_PREFIX,
    BATCH_TTL_S,
    drop_batch,
    get_batch,
    put_batch,
)
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.queueing import do_record_enqueued, enqueue_frames
from research_portal.capture.readings import ModelLabelsError
from research_portal.capture.wire import Frame, QueuedFrame
from tests.model_files import build_contract_model
from tests.support.polling import eventually
from tests.support.services import service_env, start_celery_worker


def wait_for_count(session: ParticipantSession, expected: int, timeout: float = 60) -> int:
    count = FrameResult.objects.filter(session=session).count
    return eventually(count, until=lambda stored: stored >= expected, timeout_s=timeout, interval_s=0.25)


def make_frames(session_id: int, ad_id: int, jpegs: list[bytes], first_seq: int = 0) -> list[QueuedFrame]:
    now_ms = time.time() * 1000
    return [
        Frame(first_seq + i, ad_id, i * 200, now_ms + i * 200, jpeg).queued(session_id)
        for i, jpeg in enumerate(jpegs)
    ]


def test_batch_queued_to_a_worker_lands_in_postgres(
    acme, celery_worker, face_jpegs, redis_url, deployment_mode
):
    deployment_mode.production(redis_url)
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    enqueue_frames(make_frames(session.pk, acme.ad.pk, face_jpegs[:8]))
    assert wait_for_count(session, 8) == 8, celery_worker.log()[-3000:]
    rows = list(FrameResult.objects.filter(session=session).order_by("seq"))
    assert [row.seq for row in rows] == list(range(8))
    assert sum(row.face_found for row in rows) >= 7
    assert all(row.error == "" for row in rows)
    log = celery_worker.log()
    # The pool process loaded the model when it started, before its first batch (flow control would read
    # a first batch that loads it as a backlog).
    assert "loaded at process start" in log
    assert log.index("loaded at process start") < log.index("analyze_frame_batch_task")
    assert ParticipantSession.objects.get(pk=session.pk).last_enqueued_seq == 7
    # The frames travelled beside the message and are dropped once stored: no batch is left in Redis.
    assert wait_for_no_batches(redis_url) == []


def wait_for_no_batches(redis_url: str, timeout: float = 10) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    return eventually(
        lambda: list(client.scan_iter(f"{BATCH_KEY_PREFIX}*")),
        until=lambda left: not left,
        timeout_s=timeout,
        interval_s=0.1,
    )


def test_a_batch_waits_in_redis_until_stored_and_a_second_delivery_finds_nothing(
    postgres, acme, face_jpegs, redis_url, deployment_mode, caplog
):
    deployment_mode.production(redis_url)
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    frames = make_frames(session.pk, acme.ad.pk, face_jpegs[:3])
    key = put_batch(frames)
    assert 0 < redis.Redis.from_url(redis_url).ttl(key) <= BATCH_TTL_S
    assert get_batch(key) == frames  # every value (the JPEG bytes too) survives the round trip
    assert analyze_and_store_batch(key) == 3
    assert get_batch(key) is None
    with caplog.at_level(logging.WARNING):
        # A redelivered task (its worker died after storing) or a batch lost with Redis: nothing to do, and
        # nothing lost, since its frames were either stored or never acked (the clients resend them).
        assert analyze_and_store_batch(key) == 0
    assert "gone from Redis" in caplog.text
    assert FrameResult.objects.filter(session=session).count() == 3


def test_one_batch_carries_frames_of_several_sessions(
    acme, celery_worker, face_jpegs, redis_url, deployment_mode
):
    deployment_mode.production(redis_url)
    first, second = (ParticipantSession.objects.create(study=acme.study, state="viewing") for _ in range(2))
    enqueue_frames(
        make_frames(first.pk, acme.ad.pk, face_jpegs[:3])
        + make_frames(second.pk, acme.ad.pk, face_jpegs[3:5], first_seq=10)
    )
    assert wait_for_count(second, 2) == 2, celery_worker.log()[-3000:]
    assert wait_for_count(first, 3) == 3
    sessions = ParticipantSession.objects.in_bulk([first.pk, second.pk])
    assert (sessions[first.pk].last_enqueued_seq, sessions[second.pk].last_enqueued_seq) == (2, 11)


def test_corrupt_frame_is_recorded_as_failed_and_its_batch_mates_are_stored(
    acme, celery_worker, face_jpegs, redis_url, deployment_mode
):
    deployment_mode.production(redis_url)
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    corrupt = b"\xff\xd8\xff" + b"garbage" * 50  # passes the socket's magic check, fails to decode
    enqueue_frames(make_frames(session.pk, acme.ad.pk, [face_jpegs[0], corrupt, face_jpegs[1]]))
    assert wait_for_count(session, 3) == 3, celery_worker.log()[-3000:]
    failed = FrameResult.objects.get(session=session, seq=1)
    assert failed.error and not failed.face_found and failed.happy is None
    assert FrameResult.objects.filter(session=session, face_found=True).count() == 2


def test_redelivered_batch_is_stored_once(postgres, acme, face_jpegs):
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    payload = make_frames(session.pk, acme.ad.pk, face_jpegs[:4])
    assert analyze_and_store_frames(payload) == 4
    # e.g. a worker killed after insert, task redelivered: nothing written, the frames acked again
    assert analyze_and_store_frames(payload) == 0
    assert FrameResult.objects.filter(session=session).count() == 4


def test_resent_frames_already_stored_are_acked_again_without_running_the_model(
    postgres, acme, face_jpegs, redis_url, deployment_mode, request
):
    deployment_mode.production(redis_url)
    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    first = make_frames(session.pk, acme.ad.pk, face_jpegs[:3])
    assert analyze_and_store_frames(first) == 3
    model_calls = request.getfixturevalue("model_calls")  # counts from here on
    # Under overload the client resent 1 and 2 (stored meanwhile) and 4 (its batch was lost with Redis),
    # and captured 3: the socket flags the resends, the worker looks them up and analyses only 3 and 4.
    later = make_frames(session.pk, acme.ad.pk, face_jpegs[3:5], first_seq=3)
    batch = [frame._replace(resend=True) for frame in first[1:]]
    batch += [later[0], later[1]._replace(resend=True)]
    inbox = new_inbox_name()
    assert analyze_and_store_frames(batch, inbox) == 2
    assert model_calls == face_jpegs[3:5]
    assert json.loads(redis.Redis.from_url(redis_url).lpop(inbox)) == [[session.pk, [1, 2, 3, 4]]]
    assert FrameResult.objects.filter(session=session).count() == 5


def test_a_stored_batch_counts_its_frames_the_pipelines_cpu_and_its_wall_time_for_flow_control(
    postgres, acme, face_jpegs, redis_flow
):
    from research_portal.capture import flow

    session = ParticipantSession.objects.create(study=acme.study, state="viewing")
    second = int(time.time())
    started = time.monotonic()
    assert analyze_and_store_frames(make_frames(session.pk, acme.ad.pk, face_jpegs[:4])) == 4
    took_us = (time.monotonic() - started) * 1e6
    counts = flow.flow_counters().window_sums(list(range(second, int(time.time()) + 1)))
    assert counts["stored_frames"] == 4
    # Thread CPU of the model pipeline: a face frame takes milliseconds, never nothing, never a minute.
    assert 4 * 200 < counts["analysis_cpu_us"] < 60_000_000
    # Wall time of the whole batch (the capacity estimate's denominator): at least the pipeline's CPU, at
    # most the call.
    assert counts["analysis_cpu_us"] * 0.9 <= counts["busy_us"] <= took_us


def test_dropping_a_stored_batch_while_redis_is_away_only_logs(deployment_mode, caplog):
    deployment_mode.production("redis://127.0.0.1:1/0")  # nothing listens there: connection refused at once
    with caplog.at_level(logging.WARNING):
        drop_batch(f"{BATCH_KEY_PREFIX}gone")  # the frames are stored already; the key expires by itself
    assert "could not drop stored frame batch" in caplog.text


def test_the_queued_seq_of_a_session_only_moves_forward(db, acme):
    first, second = (ParticipantSession.objects.create(study=acme.study, state="viewing") for _ in range(2))
    do_record_enqueued({first.pk: 5, second.pk: 0})
    do_record_enqueued({first.pk: 2})  # a batch of resent older frames queued after newer ones
    sessions = ParticipantSession.objects.in_bulk([first.pk, second.pk])
    assert (sessions[first.pk].last_enqueued_seq, sessions[second.pk].last_enqueued_seq) == (5, 0)
    assert all(session.last_enqueued_at is not None for session in sessions.values())


def test_a_worker_keeps_its_database_connection_from_batch_to_batch(
    postgres, acme, face_jpegs, redis_url, deployment_mode, tmp_path
):
    """Celery closes the connection around every task unless CELERY_DB_REUSE_MAX is set: each batch then paid
    a new Postgres backend. With a CONN_MAX_AGE like production's, the second batch finds the first's."""
    deployment_mode.production(redis_url)
    env = {**service_env(postgres, redis_url), "DATABASE_CONN_MAX_AGE": "60"}
    worker = start_celery_worker(env, tmp_path / "worker.log")
    try:
        session = ParticipantSession.objects.create(study=acme.study, state="viewing")
        enqueue_frames(make_frames(session.pk, acme.ad.pk, face_jpegs[:2]))
        assert wait_for_count(session, 2) == 2, worker.log()[-3000:]
        after_first = worker_backends()
        enqueue_frames(make_frames(session.pk, acme.ad.pk, face_jpegs[2:4], first_seq=2))
        assert wait_for_count(session, 4) == 4, worker.log()[-3000:]
        assert after_first and worker_backends() == after_first
    finally:
        worker.stop()


def worker_backends() -> set[int]:
    """Postgres backends on the test database other than this test's own connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in cursor.fetchall()}


def test_a_model_whose_labels_have_no_column_stores_nothing_and_says_why(
    db, acme, face_jpegs, monkeypatch, tmp_path
):
    """A deployment error (also a 503 from /readyz): refused before any row is written, never half-stored."""
    path = build_contract_model(
        tmp_path / "odd.onnx", ["happy", "confused"], [0.0, 0.0], [0.0, 0.0], version="odd"
    )
    monkeypatch.setenv("PORTAL_MODEL_PATH", str(path))
    reset_pipeline()
    try:
        session = ParticipantSession.objects.create(study=acme.study, state="viewing")
        with pytest.raises(ModelLabelsError, match="confused"):
            analyze_and_store_frames(make_frames(session.pk, acme.ad.pk, face_jpegs[:2]))
        assert not FrameResult.objects.filter(session=session).exists()
    finally:
        monkeypatch.undo()
        reset_pipeline()
