"""One load step (N participants for S seconds) and the ramp over N; the numbers of a step as one dict."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from tests.load import db
from tests.load.cpu import CpuSampler, celery_worker_pids, pids_listening_on
from tests.load.participant import Participant, ParticipantStats

# A step "holds" when frames are stored this fast after capture (p95) ...
HOLD_P95_MS = 1000.0
# ... and the stored rate in the steady window is at least this share of N x fps.
HOLD_RATE_SHARE = 0.95
# ... and participants spent at most this share of their time throttled below --fps.
HOLD_THROTTLED_SHARE = 0.05
CPU_SAMPLE_S = 1.0


@dataclass(frozen=True)
class StepConfig:
    participants: int
    seconds: float
    fps: float
    warmup_s: float
    resend_after_s: float
    drain_timeout_s: float
    store_timeout_s: float
    keep_data: bool = False
    store_frames: bool = False


def ws_url(base: str, token: str) -> tuple[str, str]:
    """(socket URL, Origin) for a participant of the server at `base` (http://host:port)."""
    parsed = urlparse(base if "://" in base else f"http://{base}")
    scheme = "wss" if parsed.scheme in {"https", "wss"} else "ws"
    origin_scheme = "https" if scheme == "wss" else "http"
    return f"{scheme}://{parsed.netloc}/ws/capture/{token}/", f"{origin_scheme}://{parsed.netloc}"


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "n": int(array.size),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(array.max()), 1),
    }


async def sample_cpu(sampler: CpuSampler, window_start: float, window_end: float) -> None:
    await asyncio.sleep(max(0.0, window_start - time.monotonic()))
    sampler.start()
    while time.monotonic() < window_end - 1e-3:
        await asyncio.sleep(min(CPU_SAMPLE_S, max(0.0, window_end - time.monotonic())))
        sampler.sample()
    sampler.stop()


async def drive(
    config: StepConfig, urls: list[str], study: db.LoadStudy, frames: list[bytes], sampler: CpuSampler
) -> tuple[list[ParticipantStats], tuple[float, float]]:
    """Connect the participants (spread over up to 2 s, round-robin over the servers), capture together
    from t0 for `seconds`, then drain and finish. Returns their stats and the steady window (monotonic)."""
    count = config.participants
    rng = random.Random(20261122)
    now = time.monotonic()
    spread = min(2.0, 0.02 * count)
    t0 = now + spread + 1.0
    stop = t0 + config.seconds
    participants = []
    for index, token in enumerate(study.tokens):
        url, origin = ws_url(urls[index % len(urls)], token)
        participants.append(
            Participant(
                url=url,
                origin=origin,
                ad_id=study.ad_id,
                frames=frames,
                fps=config.fps,
                start_at=now + spread * index / max(1, count),
                capture_at=t0 + rng.random() / config.fps,  # browsers are not in phase
                stop_at=stop,
                first_frame=rng.randrange(len(frames)),
                resend_after_s=config.resend_after_s,
                drain_timeout_s=config.drain_timeout_s,
            )
        )
    window = (t0 + config.warmup_s, stop)
    cpu = asyncio.create_task(sample_cpu(sampler, *window))
    stats = await asyncio.gather(*(participant.run() for participant in participants))
    await cpu
    return list(stats), window


def wait_until_stored(session_ids: list[int], expected: int, timeout_s: float) -> tuple[int, float]:
    """Poll Postgres until the run's frames are all stored (acks may precede storage); bounded."""
    started = time.monotonic()
    stored = db.stored_count(session_ids)
    while stored < expected and time.monotonic() - started < timeout_s:
        time.sleep(0.25)
        stored = db.stored_count(session_ids)
    return stored, time.monotonic() - started


def run_step(
    config: StepConfig,
    urls: list[str],
    frames: list[bytes],
    web_pids: set[int],
    worker_pids: set[int],
    database_name: str,
    label: str,
    worker_logs=None,
    database_url: str = "",
    redis_url: str = "",
) -> dict:
    """Run one step against the servers at `urls` and return its numbers (see docs/scaling.md)."""
    study = db.create_load_study(config.participants, config.seconds, config.fps, label, config.store_frames)
    if not web_pids:  # --url: the servers' processes are found by their listening ports
        for url in urls:
            port = urlparse(url).port
            if port:
                web_pids |= pids_listening_on(port)
    if not worker_pids:  # workers the tool did not start (containers, other terminals): by command line
        worker_pids = celery_worker_pids(redis_url)
    sampler = CpuSampler(
        set(web_pids),
        set(worker_pids),
        database_name,
        postgres_roots=pids_listening_on(urlparse(database_url).port or 5432),
        redis_roots=pids_listening_on(urlparse(redis_url).port or 6379),
    )
    wall_started = time.monotonic()
    log_offsets = worker_logs.offsets() if worker_logs else {}
    try:
        stats, window = asyncio.run(drive(config, urls, study, frames, sampler))
        sent = sum(s.sent for s in stats)
        rejected = sum(s.rejected for s in stats)
        stored_now, drain_s = wait_until_stored(study.session_ids, sent - rejected, config.store_timeout_s)
        offset = time.time() - time.monotonic()
        epoch_window = (window[0] + offset, window[1] + offset)
        from_db = db.frame_stats(study.session_ids, epoch_window)
    finally:
        if not config.keep_data:
            db.delete_load_study(study.study_id)
    cpu = {
        **sampler.result(),
        "analysis_s": analysis_cpu_s(epoch_window),
        "worker_processes_tracked": len(worker_pids),
    }
    result = summarize(config, stats, from_db, cpu, epoch_window, drain_s, wall_started, urls)
    if worker_logs:
        # Where the workers' time went during the step (Celery INFO log lines; empty at other log levels).
        tasks = worker_logs.profile(log_offsets)
        result["worker_tasks"] = tasks
        frame_tasks = tasks.get("analyze_frame_batch_task") or tasks.get("analyze_frames_task")
        if frame_tasks and frame_tasks["count"]:
            result["frames_per_batch"] = round(frame_tasks["result_sum"] / frame_tasks["count"], 1)
    return result


def analysis_cpu_s(window: tuple[float, float]) -> float | None:
    """CPU the model pipeline used inside the workers over the window (epoch seconds): the workers count it
    per second of storing (flow counters in Redis); whole seconds, scaled to the window's span."""
    from research_portal.capture import flow

    seconds = list(range(math.ceil(window[0]), math.floor(window[1])))
    if not seconds:
        return None
    counted_us = flow.flow_counters().window_sums(seconds)["analysis_cpu_us"]
    return round(counted_us / 1e6 * (window[1] - window[0]) / len(seconds), 3)


def summarize(
    config: StepConfig,
    stats: list[ParticipantStats],
    from_db: dict,
    cpu: dict,
    window: tuple[float, float],
    drain_s: float,
    wall_started: float,
    urls: list[str],
) -> dict:
    span = window[1] - window[0]
    window_ms = (window[0] * 1000, window[1] * 1000)
    sent = sum(s.sent for s in stats)
    acked = sum(s.acked for s in stats)
    rejected = sum(s.rejected for s in stats)
    sent_in_window = sum(1 for s in stats for ms in s.sent_capture_ms if window_ms[0] <= ms < window_ms[1])
    ack_latencies = [lat for s in stats for cap, lat in s.ack_latencies if window_ms[0] <= cap < window_ms[1]]
    errors: dict[str, int] = {}
    for s in stats:
        for code, n in s.errors.items():
            errors[code] = errors.get(code, 0) + n
    stored_in_window = from_db["stored_in_window"]
    server_cpu = cpu["server_s"]
    analysis_s = cpu.get("analysis_s")
    min_fps = min((s.min_fps for s in stats), default=config.fps)
    throttled = [s.throttled_s for s in stats]
    failures = [s.failure for s in stats if s.failure]
    target_rate = config.participants * config.fps
    p95 = from_db["latency_stored_ms"]["p95"]
    reasons = []
    if p95 is None or p95 >= HOLD_P95_MS:
        reasons.append(f"p95 capture->stored {p95} ms >= {HOLD_P95_MS:.0f}")
    if from_db["stored"] < sent - rejected:
        reasons.append(f"{sent - rejected - from_db['stored']} frames not stored")
    if from_db["stored_per_s"] < HOLD_RATE_SHARE * target_rate:
        reasons.append(f"stored {from_db['stored_per_s']}/s < {HOLD_RATE_SHARE:.0%} of {target_rate:g}/s")
    throttled_share = sum(throttled) / max(1e-9, config.participants * config.seconds)
    if throttled_share > HOLD_THROTTLED_SHARE:
        reasons.append(f"throttled {throttled_share:.0%} of the time (down to {min_fps:g} fps)")
    if failures:
        reasons.append(f"{len(failures)} participants failed")
    return {
        "participants": config.participants,
        "fps": config.fps,
        "duration_s": config.seconds,
        "steady_window_s": round(span, 2),
        "web_urls": urls,
        "frames": {
            "sent": sent,
            "resent": sum(s.resent for s in stats),
            "acked": acked,
            "stored": from_db["stored"],
            "duplicates": from_db["duplicates"],
            "refused_seq_null": sum(s.refused for s in stats),
            "rejected": rejected,
            "unacked_at_end": sum(s.unacked_at_end for s in stats),
            "duplicate_acks": sum(s.duplicate_acks for s in stats),
            "face_found_ratio": from_db["face_found_ratio"],
            "errors": errors,
        },
        "rate_per_s": {
            "target": target_rate,
            "sent": round(sent_in_window / span, 2),
            "stored": from_db["stored_per_s"],
        },
        "latency_ms": {
            "capture_to_stored": from_db["latency_stored_ms"],
            "capture_to_ack": percentiles(ack_latencies),
        },
        "cpu": {
            **cpu,
            "stored_in_window": stored_in_window,
            "server_s_per_stored_frame": _per(server_cpu, stored_in_window),
            "server_ms_per_stored_frame": _per(1000 * server_cpu, stored_in_window),
            "by_component_ms_per_frame": {
                name: _per(1000 * seconds, stored_in_window)
                for name, seconds in cpu["server_by_component_s"].items()
            },
            # The model pipeline's CPU inside the workers, and its share of all the server's CPU: the
            # layers around the model (web, queue, database, rollups) cost the rest, measured in the same run.
            "analysis_ms_per_stored_frame": _per(1000 * analysis_s, stored_in_window) if analysis_s else None,
            "analysis_share_of_server": round(analysis_s / server_cpu, 3)
            if analysis_s and server_cpu
            else None,
            "generator_cores": round(cpu["generator_s"] / max(1e-9, cpu["window_s"]), 3),
            "server_cores": round(server_cpu / max(1e-9, cpu["window_s"]), 3),
        },
        "throttle": {
            "time_throttled_s": round(sum(throttled), 2),
            "throttled_share": round(throttled_share, 4),
            "participants_throttled": sum(1 for t in throttled if t > 0),
            "throttle_messages": sum(s.throttle_messages for s in stats),
            "min_fps": min_fps,
        },
        "generator": {
            "max_send_lag_ms": round(max((s.max_lag_ms for s in stats), default=0.0), 1),
            "connect_ms": percentiles([s.connect_ms for s in stats if s.connect_ms]),
            "reconnects": sum(s.reconnects for s in stats),
        },
        "drain_s": round(drain_s, 2),
        "wall_s": round(time.monotonic() - wall_started, 1),
        "failures": failures[:10],
        "held": not reasons,
        "not_held_because": reasons,
    }


def _per(total: float, count: int) -> float | None:
    return round(total / count, 6) if count else None


def next_ramp_size(held: dict[int, bool], start: int, limit: int) -> int | None:
    """Double until a step fails, then bisect between the largest held and the smallest failed N."""
    good = max((n for n, ok in held.items() if ok), default=0)
    bad = min((n for n, ok in held.items() if not ok), default=None)
    if not held:
        return start
    if bad is None:
        return None if good >= limit else min(limit, good * 2)
    if bad - good <= max(1, math.ceil(0.1 * good)):
        return None
    candidate = (good + bad) // 2 if good else max(1, bad // 2)
    return None if candidate in held else candidate
