"""Fault scenarios on the real production path: a few participants stream real webcam JPEGs at 5 fps over
WebSockets to daphne, Celery workers analyse and store them in Postgres, and part of the system fails mid-run.
Each scenario reports sent / acked / stored and passes when every acked frame is stored, every sent frame is
stored in the end (the client resends what was not acked), and none is stored twice.

The tests in test_faults.py run each one (about 30 s each; part of `make test`); with `-s` they print each
scenario's numbers, which they also keep in var/faults/<scenario>.json (the table in docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg2

from inference.resources import REPO_ROOT
from tests.load.frames import load_frames
from tests.load.participant import Participant
from tests.load.runner import ws_url
from tests.load.stack import Stack, service_env
from tests.support.polling import eventually

PARTICIPANTS = 3
FPS = 5.0
CAPTURE_S = 20.0
FAULT_AT_S = 6.0
# A participant whose socket breaks reconnects at most this often (a 10 s outage takes several tries).
MAX_RECONNECTS = 30
# Frames unacked this long are resent; acks mean "stored", normally within a second.
RESEND_AFTER_S = 4.0
DRAIN_TIMEOUT_S = 45.0
# Corrupt body behind a valid JPEG start: passes the socket's checks, fails to decode in the worker.
CORRUPT_JPEG = b"\xff\xd8\xff" + b"not really a jpeg " * 64


@dataclass
class FaultResult:
    scenario: str
    sent: int
    acked: int
    stored: int
    duplicates: int
    acked_not_stored: int
    sent_not_stored: int
    failed_rows: int  # stored with an analysis error (the corrupt-frame scenario expects some)
    resent: int
    reconnects: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.sent > 0
            and self.acked_not_stored == 0
            and self.sent_not_stored == 0
            and self.duplicates == 0
            and self.stored == self.sent
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


Fault = Callable[[Stack], Awaitable[str]]


def prepare_database(database_url: str, redis_url: str) -> dict:
    """Migrate and create the study in a child process (this process's Django may be set up elsewhere)."""
    script = (
        "import json, sys\n"
        "from tests.load import db\n"
        f"db.setup_django({database_url!r}, {redis_url!r})\n"
        "db.migrate()\n"
        f"study = db.create_load_study({PARTICIPANTS}, {CAPTURE_S}, {FPS}, 'faults')\n"
        "print(json.dumps(study.__dict__))\n"
    )
    env = service_env(database_url, redis_url)
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    if output.returncode != 0:
        raise RuntimeError(f"preparing the database failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def stored_rows(database_url: str, session_ids: list[int]) -> list[tuple[int, int, bool]]:
    """(session id, seq, failed) of every stored row of the run."""
    connection = psycopg2.connect(database_url.replace("postgres://", "postgresql://"), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT session_id, seq, error <> '' FROM capture_frameresult WHERE session_id = ANY(%s)",
                [session_ids],
            )
            return cursor.fetchall()
    finally:
        connection.close()


def wait_for_rows(database_url: str, session_ids: list[int], expected: int, timeout_s: float) -> list:
    def rows() -> list:
        try:
            return stored_rows(database_url, session_ids)
        except psycopg2.Error:  # the fault may have the database away
            return []

    return eventually(rows, until=lambda found: len(found) >= expected, timeout_s=timeout_s, interval_s=0.5)


async def drive(study: dict, url: str, frames_of: Callable[[int], list[bytes]], fault: Fault | None, stack):
    now = time.monotonic()
    t0 = now + 1.0
    participants = []
    for index, token in enumerate(study["tokens"]):
        socket_url, origin = ws_url(url, token)
        participants.append(
            Participant(
                url=socket_url,
                origin=origin,
                ad_id=study["ad_id"],
                frames=frames_of(index),
                fps=FPS,
                start_at=now + 0.1 * index,
                capture_at=t0 + index / (FPS * len(study["tokens"])),
                stop_at=t0 + CAPTURE_S,
                first_frame=0,
                resend_after_s=RESEND_AFTER_S,
                drain_timeout_s=DRAIN_TIMEOUT_S,
                max_reconnects=MAX_RECONNECTS,
            )
        )

    async def inject() -> str:
        if fault is None:
            return ""
        await asyncio.sleep(max(0.0, t0 + FAULT_AT_S - time.monotonic()))
        return await fault(stack)

    *stats, note = await asyncio.gather(*(p.run() for p in participants), inject())
    return participants, stats, note


def run_scenario(
    name: str,
    database_url: str,
    redis_url: str,
    fault: Fault | None = None,
    frames_of: Callable[[int], list[bytes]] | None = None,
    workers: int = 2,
    log_dir: Path | None = None,
) -> FaultResult:
    started = time.monotonic()
    frames = load_frames()
    frames_of = frames_of or (lambda _index: frames)
    study = prepare_database(database_url, redis_url)
    env = service_env(database_url, redis_url)
    # A batch held by a killed worker goes to another after 10 s (production: 60 s); looked for every 2 s.
    env.update(CELERY_VISIBILITY_TIMEOUT_S="10", CELERY_RESTORE_INTERVAL_S="2", LOG_FORMAT="plain")
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"fault-{name}-"))
    stack = Stack(env, log_dir)
    try:
        stack.start_web("daphne", 1)
        stack.start_workers(workers, "solo", "info")
        participants, stats, note = asyncio.run(drive(study, stack.urls[0], frames_of, fault, stack))
        sent = sum(s.sent for s in stats)
        rows = wait_for_rows(database_url, study["session_ids"], sent, timeout_s=60)
    finally:
        stack.stop()
    stored_keys = {(session_id, seq) for session_id, seq, _failed in rows}
    acked_keys = {
        (session_id, seq)
        for session_id, p in zip(study["session_ids"], participants, strict=True)
        for seq in p.acked
    }
    sent_keys = {
        (session_id, seq)
        for session_id, p in zip(study["session_ids"], participants, strict=True)
        for seq in range(p.seq)
    }
    notes = [note] if note else []
    notes += [f"participant failed: {s.failure}" for s in stats if s.failure]
    return FaultResult(
        scenario=name,
        sent=sent,
        acked=sum(s.acked for s in stats),
        stored=len(rows),
        duplicates=len(rows) - len(stored_keys),
        acked_not_stored=len(acked_keys - stored_keys),
        sent_not_stored=len(sent_keys - stored_keys),
        failed_rows=sum(1 for _s, _q, failed in rows if failed),
        resent=sum(s.resent for s in stats),
        reconnects=sum(s.reconnects for s in stats),
        seconds=round(time.monotonic() - started, 1),
        notes=notes,
    )


# ---- the faults ------------------------------------------------------------------------------------------


async def kill_a_worker(stack: Stack) -> str:
    """SIGKILL the first worker while it holds a batch (its log shows a task received, not yet done)."""
    victim = stack.workers[0]
    deadline = time.monotonic() + 10
    in_flight = ""
    while time.monotonic() < deadline and not in_flight:
        in_flight = task_in_flight(victim.log_tail(20000))
        if not in_flight:
            await asyncio.sleep(0.005)
    os.kill(victim.process.pid, signal.SIGKILL)
    held = f"holding batch {in_flight}" if in_flight else "holding no batch"
    return f"kill -9 worker pid {victim.process.pid} at +{FAULT_AT_S:.0f} s, {held}"


def task_in_flight(log: str) -> str:
    """The id of a frame batch task the worker log shows as received but not finished, or ''."""
    received = re.findall(r"analyze_frame_batch_task\[([0-9a-f-]+)\] received", log)
    finished = set(re.findall(r"analyze_frame_batch_task\[([0-9a-f-]+)\] (?:succeeded|retry|raised)", log))
    pending = [task for task in received if task not in finished]
    return pending[-1] if pending else ""


def outage(stop: Callable[[], None], start: Callable[[], None], down_s: float, what: str) -> Fault:
    """A service stopped at the fault time and started again `down_s` later."""

    async def fault(_stack: Stack) -> str:
        await asyncio.to_thread(stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(start)
        return f"{what} down at +{FAULT_AT_S:.0f} s for {down_s:.0f} s"

    return fault


def with_corrupt_frames(frames: list[bytes], every: int = 10) -> Callable[[int], list[bytes]]:
    """Participant 0 sends a corrupt JPEG as every `every`-th frame; the others send only real frames."""
    corrupted = [CORRUPT_JPEG if i % every == every - 1 else frame for i, frame in enumerate(frames)]
    return lambda index: corrupted if index == 0 else frames
