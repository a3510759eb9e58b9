"""The /metrics snapshot in Prometheus' text exposition format, written by prometheus-client.

A snapshot is read once per request (shared counters in Redis, this process's batchers) and handed to a
collector in a registry made for that request: no metric object lives between requests, so nothing is shared
between tests, processes or threads, and every scrape shows exactly the snapshot its JSON form would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# The classic text format (0.0.4): every name here is a legacy Prometheus name, so the body is the same in
# either version and older scrapers read it as they always did.
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


@dataclass(frozen=True)
class SnapshotMetric:
    """One sample of the snapshot: its Prometheus name, where its value is, its help text and type."""

    name: str
    path: tuple[str, ...]  # keys into the snapshot, e.g. ("capture", "queue_batches")
    help: str
    kind: str = "gauge"  # or "counter"
    if_none: float = math.nan  # what a missing value means (no store rate lately: an infinite backlog)

    def read(self, snapshot: dict) -> float:
        value = snapshot
        for key in self.path:
            value = value[key]
        return self.if_none if value is None else value


SNAPSHOT_METRICS = (
    SnapshotMetric(
        "portal_capture_queue_batches", ("capture", "queue_batches"), "Frame batches waiting for a worker"
    ),
    SnapshotMetric(
        "portal_capture_queue_frames", ("capture", "queue_frames"), "Frames waiting for a worker (estimated)"
    ),
    SnapshotMetric(
        "portal_capture_queue_bound_frames",
        ("queue_bound_frames",),
        "Queued frames past which frames are refused",
    ),
    SnapshotMetric(
        "portal_capture_backlog_seconds",
        ("capture", "backlog_s"),
        "Queued frames over the workers' capacity",
        if_none=math.inf,
    ),
    SnapshotMetric(
        "portal_capture_queued_frames_per_second", ("capture", "queued_fps"), "Frames queued per second"
    ),
    SnapshotMetric(
        "portal_capture_stored_frames_per_second", ("capture", "stored_fps"), "Frames stored per second"
    ),
    SnapshotMetric(
        "portal_capture_capacity_frames_per_second",
        ("capture", "capacity_fps"),
        "Frames per second the workers store with every process busy (estimated)",
    ),
    SnapshotMetric(
        "portal_capture_failed_frames_per_second",
        ("capture", "failed_fps"),
        "Frames stored with an analysis error per second",
    ),
    SnapshotMetric(
        "portal_capture_analysis_ms_per_frame",
        ("capture", "analysis_ms_per_frame"),
        "Model pipeline CPU per stored frame, milliseconds",
    ),
    SnapshotMetric("portal_workers", ("capture", "workers"), "Celery worker nodes alive"),
    SnapshotMetric(
        "portal_worker_processes", ("capture", "worker_processes"), "Analysis processes across worker nodes"
    ),
    SnapshotMetric(
        "portal_web_capture_sockets",
        ("web_process", "capture_sockets"),
        "Capture sockets open in this web process",
    ),
    SnapshotMetric(
        "portal_web_buffered_frames",
        ("web_process", "buffered_frames"),
        "Frames this web process holds before queueing",
    ),
    SnapshotMetric(
        "portal_web_oldest_frame_age_seconds",
        ("web_process", "oldest_frame_age_s"),
        "How long the oldest frame this web process holds has waited to be queued",
    ),
    SnapshotMetric(
        "portal_web_fps_scale",
        ("web_process", "fps_scale"),
        "Share of the study frame rate clients are asked for",
    ),
    SnapshotMetric(
        "portal_web_unstorable_frames_total",
        ("web_process", "unstorable_frames"),
        "Frames refused to their sockets because their values could not be stored",
        kind="counter",
    ),
)
_FAMILIES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


class SnapshotCollector:
    """A prometheus-client collector of one snapshot (`ops.views.capture_metrics`)."""

    def __init__(self, snapshot: dict) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for metric in SNAPSHOT_METRICS:
            yield _FAMILIES[metric.kind](metric.name, metric.help, value=metric.read(self.snapshot))


def prometheus_text(snapshot: dict) -> bytes:
    """The snapshot as Prometheus text, from a registry that lives for this call only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
