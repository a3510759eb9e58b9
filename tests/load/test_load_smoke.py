"""The load generator end to end on the real stack it starts itself (daphne, a Celery worker, Postgres,
Redis): 2 participants for 6 s, every frame sent is acked and stored once, and the report is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from inference.resources import REPO_ROOT
from tests.load.frames import clip_path
from tests.support.services import reachable_redis_url, skip_or_fail

pytestmark = pytest.mark.e2e

STEP_KEYS = {
    "participants", "fps", "duration_s", "steady_window_s", "frames", "rate_per_s", "latency_ms", "cpu",
    "throttle", "generator", "drain_s", "held", "not_held_because",
}  # fmt: skip
FRAME_KEYS = {"sent", "resent", "acked", "stored", "duplicates", "refused_seq_null", "rejected", "errors"}
CPU_KEYS = {
    "server_s", "server_by_component_s", "server_ms_per_stored_frame", "generator_s", "generator_cores",
    "machine_minus_generator_s",
}  # fmt: skip


def load_database_url() -> str:
    """A database of its own beside the test database (the tool migrates it and keeps it between runs)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        skip_or_fail("Postgres is required: run via `make test` or set DATABASE_URL=postgres://...")
    parsed = urlparse(url)
    name = (parsed.path.lstrip("/") or "postgres") + "_load"
    return urlunparse(parsed._replace(path=f"/{name}"))


def test_two_participants_every_frame_sent_is_acked_and_stored_once(tmp_path: Path) -> None:
    database_url = load_database_url()
    redis_url = reachable_redis_url()
    if not clip_path().is_file():
        skip_or_fail(f"webcam clip not found at {clip_path()} (set PORTAL_SHARED_DIR)")

    report_path = tmp_path / "load.json"
    command = [sys.executable, "-m", "tests.load", "--participants", "2", "--seconds", "6", "--workers", "1"]
    command += ["--database-url", database_url, "--redis-url", redis_url, "--json", str(report_path)]
    command += ["--pin-workers", "--compare-bare", "--bare-seconds", "1"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "frames sent / acked / stored" in done.stdout  # the printed table

    report = json.loads(report_path.read_text())
    step = report["result"]
    assert STEP_KEYS <= step.keys() and FRAME_KEYS <= step["frames"].keys() and CPU_KEYS <= step["cpu"].keys()
    frames = step["frames"]
    assert frames["sent"] >= 2 * 5 * 5  # 2 participants x 5 fps x ~6 s
    assert frames["stored"] == frames["acked"] == frames["sent"], frames
    assert frames["duplicates"] == 0
    assert frames["rejected"] == 0 and frames["errors"] == {}, frames
    latency = step["latency_ms"]
    for kind in ("capture_to_stored", "capture_to_ack"):
        assert (
            latency[kind]["n"] > 0
            and 0 < latency[kind]["p50"] <= latency[kind]["p95"] <= latency[kind]["p99"]
        )
    assert step["rate_per_s"]["stored"] > 0
    assert step["cpu"]["server_ms_per_stored_frame"] > 0
    # The workers' own count of the model pipeline's CPU: a part of the server's, never all of it.
    assert 0 < step["cpu"]["analysis_ms_per_stored_frame"] < step["cpu"]["server_ms_per_stored_frame"]
    assert 0 < step["cpu"]["analysis_share_of_server"] < 1
    assert step["generator"]["reconnects"] == 0 and not step["failures"]
    assert step["throttle"]["min_fps"] > 0
    assert report["setup"]["worker_pool"].endswith("pinned one per core")
    # The bare pipeline ran before and after the load; the ratios use the mean of the two.
    bare = report["bare"]
    before, after = (run["frames_per_s"] for run in bare["runs"])
    assert before > 0 and after > 0
    assert bare["frames_per_s"] == pytest.approx((before + after) / 2, abs=0.1)
    assert 0 < bare["ratio_cpu"] and 0 < bare["ratio_rate"]
