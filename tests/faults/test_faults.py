"""Faults mid-run on the real production path (daphne, Celery workers, Redis, Postgres): nothing the client
got an ack for is lost, everything it sent is stored in the end, nothing twice. About a minute each."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from inference.resources import REPO_ROOT
from tests.faults import scenario
from tests.faults.services import PrivatePostgres, PrivateRedis, ServiceUnavailable
from tests.load.frames import load_frames
from tests.support.services import skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAIN_POSTGRES = "postgres://postgres@127.0.0.1:5432/"


def report(result: scenario.FaultResult) -> None:
    """Printed with -s, and kept under var/faults/ for the docs' table."""
    folder = REPO_ROOT / "var" / "faults"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{result.scenario}.json").write_text(json.dumps(result.as_dict(), indent=2))
    print(json.dumps(result.as_dict()))


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    redis = PrivateRedis()
    try:
        redis.start()
    except ServiceUnavailable as missing:
        skip_or_fail(str(missing))
    yield redis
    redis.stop()


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A fresh database on the machine's Postgres, dropped afterwards."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(MAIN_POSTGRES + "postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        skip_or_fail(f"Postgres is required at 127.0.0.1:5432: {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield MAIN_POSTGRES + name
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def check(result: scenario.FaultResult) -> None:
    report(result)
    assert result.passed, result.as_dict()


def test_a_worker_killed_mid_run_loses_nothing(scratch_database, private_redis, tmp_path: Path):
    result = scenario.run_scenario(
        "worker_killed", scratch_database, private_redis.url, scenario.kill_a_worker, log_dir=tmp_path
    )
    check(result)
    # The victim died holding a batch; with acks_late, Redis handed that same task to the survivor.
    note = result.notes[0]
    assert "holding batch" in note, note
    task_id = note.rsplit(" ", 1)[-1]
    assert f"[{task_id}] received" in (tmp_path / "worker-1.log").read_text(), "batch was not redelivered"


def test_redis_restart_mid_run_loses_nothing(scratch_database, private_redis, tmp_path: Path):
    result = scenario.run_scenario(
        "redis_restart",
        scratch_database,
        private_redis.url,
        # SIGKILL: the queue and every channel message are lost, as in a crash.
        scenario.outage(private_redis.kill, private_redis.start, 3.0, "Redis (killed, queue lost)"),
        log_dir=tmp_path,
    )
    check(result)
    assert result.reconnects > 0 or result.resent > 0  # the gap was real and was covered by resends


def test_postgres_stopped_for_ten_seconds_loses_nothing(private_redis, tmp_path: Path):
    postgres = PrivatePostgres()
    try:
        postgres.init()
    except ServiceUnavailable as missing:
        skip_or_fail(str(missing))
    try:
        postgres.create_database("portal")
        result = scenario.run_scenario(
            "postgres_stop",
            postgres.url("portal"),
            private_redis.url,
            scenario.outage(postgres.stop, postgres.start, 10.0, "Postgres (fast shutdown)"),
            log_dir=tmp_path,
        )
    finally:
        postgres.remove()
    check(result)


def test_corrupt_frames_are_recorded_as_failed_and_their_batch_mates_stored(
    scratch_database, private_redis, tmp_path: Path
):
    result = scenario.run_scenario(
        "corrupt_frame",
        scratch_database,
        private_redis.url,
        frames_of=scenario.with_corrupt_frames(load_frames()),
        log_dir=tmp_path,
    )
    check(result)
    # Participant 0 sent one corrupt frame in ten: those rows carry the decoding error, nothing else does.
    assert result.failed_rows >= 5
    assert result.failed_rows <= result.sent // 3 // 10 + 1
