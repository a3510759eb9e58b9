"""What the live view's provisional figures (research_portal/analytics/provisional.py) cost at a given number
of concurrent participants, against the real Redis:

    python -m tests.analytics_bench.live [--participants 1000] [--seconds 10] [--ads 10]

Participants watch `--ads` ads at 5 fps; their frames arrive in batches of CAPTURE_FLUSH_MAX_FRAMES (32) mixed
across sessions, as the web process's batcher sends them. Each stored batch is tallied (tally_rows + one
pipelined Redis round trip); every second each ad's live push reads its snapshot once per open dashboard.
Reports CPU and wall time per batch and per frame, the snapshot's time, and the Redis memory the tally holds.
Writes var/bench/live.json. Uses Redis database 13 of --redis (flushed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

FPS = 5
BATCH = 32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.analytics_bench.live", description=__doc__)
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="of simulated capture")
    parser.add_argument("--ads", type=int, default=10)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--output", default="var/bench/live.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")
    os.environ["REDIS_URL"] = args.redis
    import django

    django.setup()
    import numpy as np
    import redis

    from research_portal import deployment
    from research_portal.analytics.provisional import live_snapshot, live_tally, tally_rows
    from research_portal.capture.models import FrameResult

    deployment.switch_to(deployment.Deployment(deployment.Mode.PRODUCTION, args.redis))
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    rng = np.random.default_rng(0)
    frames = int(args.participants * FPS * args.seconds)
    session = rng.integers(0, args.participants, frames)  # arrival order mixes the sessions
    ad = session % args.ads + 1
    media_ms = (np.arange(frames) // args.participants * (1000 // FPS)) % 30_000
    smile = rng.random(frames)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        FrameResult(
            session_id=int(s) + 1, ad_id=int(a), seq=i, media_time_ms=int(m), captured_at=start,
            face_found=bool(v > 0.05), smile=float(v), valence=float(2 * v - 1), model_version="bench",
        )
        for i, (s, a, m, v) in enumerate(zip(session, ad, media_ms, smile, strict=True))
    ]  # fmt: skip
    tally = live_tally()
    wall, cpu = [], []
    for first in range(0, frames, BATCH):
        batch = rows[first : first + BATCH]
        started, started_cpu = time.perf_counter(), time.process_time()
        tally.add(tally_rows(batch), int(time.time() // 2))
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    snapshots = []
    for ad_id in range(1, args.ads + 1):
        started = time.perf_counter()
        snapshot = live_snapshot(ad_id)
        snapshots.append(time.perf_counter() - started)
    memory = client.info("memory")["used_memory"]
    client.flushdb()
    batches = len(wall)
    result = {
        "participants": args.participants,
        "ads": args.ads,
        "frames": frames,
        "batches": batches,
        "batch_wall_ms": {
            "median": 1000 * statistics.median(wall),
            "p95": 1000 * float(np.percentile(wall, 95)),
        },
        "batch_cpu_ms_median": 1000 * statistics.median(cpu),
        "cpu_us_per_frame": 1e6 * sum(cpu) / frames,
        "wall_us_per_frame": 1e6 * sum(wall) / frames,
        "worker_cores_at_this_rate": sum(cpu) / args.seconds,
        "snapshot_ms": {"median": 1000 * statistics.median(snapshots), "max": 1000 * max(snapshots)},
        "watching_per_ad": snapshot.watching,
        "redis_memory_bytes": memory,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
