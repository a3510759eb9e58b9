"""How loaded the frame path is, and how fast clients should capture because of it (backpressure).

Web processes count the frames they queue, workers count the frames they store and say they are alive;
every process reads the same numbers (flow_counters: Redis in production, this process's memory in embedded
mode). read_capture_load() turns them and the analysis backend's queue depth into a CaptureLoad: queue
depth, frames/s in and out, the workers and what they can store. From it, next_fps_scale() decides the
capture rate every web process asks its browsers for, and queue_is_full() says when new frames are refused
(the client keeps them and resends later).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis
from django.conf import settings

from research_portal.deployment import ModeDependent

logger = logging.getLogger(__name__)

# Rates are averaged over this many whole seconds (long enough to smooth batch-sized steps).
RATE_WINDOW_S = 10
COUNTER_TTL_S = 120
WORKER_HEARTBEAT_S = 5
WORKER_STALE_AFTER_S = 3 * WORKER_HEARTBEAT_S
# analysis_cpu_us: CPU the model pipeline itself used (decode, detect, align, classify) in the analysing
# threads, so the share of the capture path's CPU that is not the model can be read in production.
# busy_us: wall time workers spent on batches (analysis and insert), so their capacity is known while they
# idle part of the time.
COUNTERS = ("queued_frames", "queued_batches", "stored_frames", "failed_frames", "analysis_cpu_us", "busy_us")
# Up to this many batches per analysis process waiting is normal pipelining, not a backlog: the stored rate
# only measures demand while workers keep up (at a run's start it is near 0 and made every short queue look
# like seconds of backlog: throttled 20% of a 64-participant run the workers were keeping up with).
NORMAL_QUEUE_BATCHES_PER_PROCESS = 2


@dataclass(frozen=True)
class CaptureLoad:
    queue_batches: int  # batches waiting for a worker (exact)
    queue_frames: int  # frames in those batches (estimated from recent batch sizes)
    queued_fps: float  # frames/s web processes handed to the queue (last RATE_WINDOW_S)
    stored_fps: float  # frames/s workers stored
    failed_fps: float  # frames/s stored with an analysis error (corrupt image etc.)
    workers: int  # worker nodes alive (`celery worker` instances, heartbeats)
    worker_processes: int  # analysis processes (threads in embedded mode) across those nodes
    backlog_s: float  # queue_frames / capacity_fps: how long a new frame waits; inf when nothing is stored
    # Frames/s the workers store when all are busy: stored frames over the wall time they took, times the
    # processes (never below stored_fps). The stored rate alone is the demand while workers keep up: a burst
    # into idle workers looked like seconds of backlog and throttled every socket (CI, 2026-12-02).
    capacity_fps: float = 0.0
    analysis_ms_per_frame: float | None = None  # model pipeline CPU per stored frame; None when none stored

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backlog_s"] = None if self.backlog_s == float("inf") else round(self.backlog_s, 3)
        return data


class LocalFlowCounters:
    """Embedded mode: one process does everything, so its own counters are the whole picture."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[int, int]] = defaultdict(dict)

    def add(self, amounts: dict[str, int], second: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                buckets = self.counts[name]
                buckets[second] = buckets.get(second, 0) + amount
                for old in [s for s in buckets if s < second - COUNTER_TTL_S]:
                    del buckets[old]

    def window_sums(self, seconds: list[int]) -> dict[str, int]:
        with self.lock:
            return {name: sum(self.counts[name].get(s, 0) for s in seconds) for name in COUNTERS}

    def workers(self) -> tuple[int, int]:
        return 1, settings.CAPTURE_THREAD_WORKERS

    def heartbeat(self, worker: str, processes: int, now: float) -> None:
        pass


class RedisFlowCounters:
    """Production: counters in per-second keys, worker heartbeats in one hash."""

    PREFIX = "portal:flow"

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, amounts: dict[str, int], second: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name, amount in amounts.items():
            key = f"{self.PREFIX}:{name}:{second}"
            pipe.incrby(key, amount)
            pipe.expire(key, COUNTER_TTL_S)
        pipe.execute()

    def window_sums(self, seconds: list[int]) -> dict[str, int]:
        keys = [f"{self.PREFIX}:{name}:{s}" for name in COUNTERS for s in seconds]
        values = [int(v or 0) for v in self.redis.mget(keys)]
        n = len(seconds)
        return {name: sum(values[i * n : (i + 1) * n]) for i, name in enumerate(COUNTERS)}

    def workers(self) -> tuple[int, int]:
        """(nodes, processes) that sent a heartbeat lately; forgets the ones that stopped."""
        now = time.time()
        nodes = processes = 0
        stale = []
        for name, beat in self.redis.hgetall(f"{self.PREFIX}:workers").items():
            at, count = beat.split()
            if now - float(at) > WORKER_STALE_AFTER_S:
                stale.append(name)
            else:
                nodes += 1
                processes += int(count)
        if stale:
            self.redis.hdel(f"{self.PREFIX}:workers", *stale)
        return nodes, processes

    def heartbeat(self, worker: str, processes: int, now: float) -> None:
        self.redis.hset(f"{self.PREFIX}:workers", worker, f"{now} {processes}")


flow_counters: ModeDependent[LocalFlowCounters | RedisFlowCounters] = ModeDependent(
    embedded=LocalFlowCounters, production=RedisFlowCounters
)


class AnalysisQueue(Protocol):
    """The analysis backend (queueing.analysis_backend()), which knows how many batches wait for it."""

    def queue_batches(self) -> int: ...


def record_queued(frames: int, batches: int) -> None:
    """Web processes, after a batch is queued. Counting must never make a queued batch look failed."""
    _count({"queued_frames": frames, "queued_batches": batches})


def record_stored(frames: int, failed: int, analysis_cpu_s: float = 0.0, busy_s: float = 0.0) -> None:
    """Workers, after a batch is stored (`analysis_cpu_s`: the pipeline's CPU for it; `busy_s`: the wall
    time the batch took). Counting must never fail a stored batch."""
    _count(
        {
            "stored_frames": frames,
            "failed_frames": failed,
            "analysis_cpu_us": round(analysis_cpu_s * 1e6),
            "busy_us": round(busy_s * 1e6),
        }
    )


def _count(amounts: dict[str, int]) -> None:
    try:
        flow_counters().add(amounts, int(time.time()))
    except Exception:  # noqa: BLE001 - counters are advisory; the frames are already safe
        logger.warning("flow counters not updated", exc_info=True)


def read_capture_load(queue: AnalysisQueue) -> CaptureLoad:
    """The load now: the shared counters, and the batches waiting in `queue` (the analysis backend)."""
    store = flow_counters()
    now = int(time.time())
    # Whole seconds that have ended; the current one is still filling.
    sums = store.window_sums(list(range(now - RATE_WINDOW_S, now)))
    queue_batches = queue.queue_batches()
    frames_per_batch = (
        sums["queued_frames"] / sums["queued_batches"]
        if sums["queued_batches"]
        else float(settings.CAPTURE_FLUSH_MAX_FRAMES)
    )
    queue_frames = round(queue_batches * frames_per_batch)
    stored_fps = sums["stored_frames"] / RATE_WINDOW_S
    workers, worker_processes = store.workers()
    busy_s = sums["busy_us"] / 1e6
    capacity_fps = worker_capacity_fps(stored_fps, sums["stored_frames"], busy_s, worker_processes)
    if queue_batches <= NORMAL_QUEUE_BATCHES_PER_PROCESS * max(1, worker_processes):
        backlog_s = 0.0
    else:
        backlog_s = queue_frames / capacity_fps if capacity_fps > 0 else float("inf")
    return CaptureLoad(
        queue_batches=queue_batches,
        queue_frames=queue_frames,
        queued_fps=sums["queued_frames"] / RATE_WINDOW_S,
        stored_fps=stored_fps,
        failed_fps=sums["failed_frames"] / RATE_WINDOW_S,
        workers=workers,
        worker_processes=worker_processes,
        backlog_s=backlog_s,
        capacity_fps=capacity_fps,
        analysis_ms_per_frame=(
            round(sums["analysis_cpu_us"] / 1000 / sums["stored_frames"], 3)
            if sums["stored_frames"]
            else None
        ),
    )


def worker_capacity_fps(stored_fps: float, stored_frames: int, busy_s: float, processes: int) -> float:
    """Frames/s the workers would store with every process busy: each process's rate while busy (the frames
    stored over the busy wall time, summed over processes), times the processes. Never below the rate they
    did store; that rate when they did not say how long they were busy."""
    if busy_s <= 0 or stored_frames <= 0:
        return stored_fps
    return max(stored_fps, max(1, processes) * stored_frames / busy_s)


def next_fps_scale(current: float, load: CaptureLoad) -> float:
    """The share of each study's frame rate clients should capture at, given the current one.

    Above the high-water backlog the rate drops towards what the workers can store (with 10% to drain the
    queue), by at most half per step; below the low-water mark it grows back by a quarter per step. In
    between it holds, so the rate does not oscillate around the workers' capacity.
    """
    minimum = settings.CAPTURE_MIN_FPS_SCALE
    if load.backlog_s > settings.CAPTURE_BACKLOG_HIGH_S:
        capacity = max(load.stored_fps, load.capacity_fps)
        capacity_share = capacity / load.queued_fps if load.queued_fps > 0 else 0.0
        return max(minimum, current * min(0.9, max(0.5, 0.9 * capacity_share)))
    if load.backlog_s < settings.CAPTURE_BACKLOG_LOW_S:
        return min(1.0, current * 1.25)
    return current


def resend_after_s(load: CaptureLoad) -> float:
    """How long clients should wait for an ack before resending a frame: the default, or twice the backlog
    while frames wait that long in the queue (whole seconds, so the hint only changes with the load)."""
    wanted = math.ceil(2 * load.backlog_s) if math.isfinite(load.backlog_s) else math.inf
    return float(min(settings.CAPTURE_MAX_RESEND_AFTER_S, max(settings.CAPTURE_RESEND_AFTER_S, wanted)))


def queue_is_full(load: CaptureLoad) -> bool:
    """The bound on queued frames: past it new frames are refused (not acked), so the queue cannot grow."""
    return load.queue_frames >= settings.CAPTURE_MAX_QUEUE_FRAMES


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def start_worker_heartbeat(processes: int, worker: str | None = None) -> threading.Thread:
    """Run in each `celery worker` (main process): say it is alive, with its pool size, for metrics."""
    name = worker or worker_name()

    def beat() -> None:
        while True:
            try:
                flow_counters().heartbeat(name, processes, time.time())
            except Exception:  # noqa: BLE001 - Redis away: the next beat tries again
                pass
            time.sleep(WORKER_HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="worker-heartbeat", daemon=True)
    thread.start()
    return thread
