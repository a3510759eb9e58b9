"""The live view's provisional figures: what the participants watching an ad right now show, within seconds
of their frames being stored, before the exact rollups have them.

The exact rollups refresh a session at most once per ANALYTICS_ROLLUP_INTERVAL_S (30 s, debounce.py: a refresh
costs 12-17 ms of database work per session), so an ad shorter than that was never seen mid-ad. Each stored
batch therefore also adds its frames to a cheap tally per ad and wall-clock bucket of BUCKET_S: per second of
the ad, the frames with a reading and the sums of their smile and valence, and the set of sessions that sent
frames. A live push (live.notify_frames_stored, throttled to one per ad per second) reads the buckets of the
last WINDOW_S: how many participants are watching now, and a provisional trace. It is a frame mean over
every participant of the window, unfiltered, with no confidence band; the exact trace (participant means,
filters, CI, n) replaces it on the rollup interval. docs/analytics.md, "Live view", has what this costs.

Production keeps the tally in Redis (one pipelined round trip per stored batch, keys expire on their own),
shared by every worker; embedded mode in this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import redis
from django.db import transaction

from research_portal.analytics.live import notify_frames_stored
from research_portal.capture.models import FrameResult
from research_portal.deployment import ModeDependent

logger = logging.getLogger(__name__)

# "Now" is the last WINDOW_S of stored frames, in buckets of BUCKET_S (a bucket ages out as a whole, so the
# window really covers WINDOW_S to WINDOW_S + BUCKET_S). A participant's frames reach the server a few
# hundred ms after capture and are stored about a second later, so 10 s holds every current viewer.
WINDOW_S = 10
BUCKET_S = 2
SUMS = ("n", "smile", "nv", "valence")  # frames with a reading, their smile sum; frames with valence, sum


@dataclass(frozen=True)
class BatchTally:
    """One stored batch's contribution to one ad: per second of the ad, SUMS; the sessions seen."""

    ad_id: int
    seconds: np.ndarray  # [S] int
    sums: np.ndarray  # [S, len(SUMS)] float
    sessions: frozenset[int]


def tally_rows(rows: Iterable[FrameResult]) -> list[BatchTally]:
    """Per ad, the rows' sums by second of the ad. Baseline frames (no ad) are not part of an ad's view;
    frames without a face count as watching but add no reading."""
    rows = [row for row in rows if row.ad_id is not None]
    if not rows:
        return []
    ad = np.fromiter((row.ad_id for row in rows), np.int64, len(rows))
    second = np.fromiter((row.media_time_ms // 1000 for row in rows), np.int64, len(rows))
    smile = np.array([np.nan if row.smile is None else row.smile for row in rows], dtype=float)
    valence = np.array([np.nan if row.valence is None else row.valence for row in rows], dtype=float)
    read = np.array([row.face_found and not row.error for row in rows]) & np.isfinite(smile)
    has_valence = read & np.isfinite(valence)
    columns = np.stack(
        [read, np.where(read, smile, 0.0), has_valence, np.where(has_valence, valence, 0.0)], axis=1
    ).astype(float)
    session = np.fromiter((row.session_id for row in rows), np.int64, len(rows))
    tallies = []
    for ad_id in np.unique(ad):
        of_ad = ad == ad_id
        seconds, position = np.unique(second[of_ad], return_inverse=True)
        sums = np.zeros((len(seconds), len(SUMS)))
        np.add.at(sums, position, columns[of_ad])
        tallies.append(BatchTally(int(ad_id), seconds, sums, frozenset(session[of_ad].tolist())))
    return tallies


def current_bucket(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // BUCKET_S)


def window_buckets(now: float | None = None) -> range:
    last = current_bucket(now)
    return range(last - WINDOW_S // BUCKET_S, last + 1)


@dataclass(frozen=True)
class LiveSnapshot:
    """What an ad's live view shows now (module docstring): participants watching, and per second of the ad
    the frames stored in the window with their mean smile and valence (None where none had one)."""

    ad_id: int
    watching: int
    seconds: list[int]
    frames: list[int]
    smile: list[float | None]
    valence: list[float | None]
    window_s: int = WINDOW_S

    def to_json(self) -> dict:
        return {
            "ad": self.ad_id,
            "watching": self.watching,
            "window_s": self.window_s,
            "seconds": self.seconds,
            "frames": self.frames,
            "smile": self.smile,
            "valence": self.valence,
        }


def snapshot_of(ad_id: int, sums_by_second: dict[int, np.ndarray], sessions: set[int]) -> LiveSnapshot:
    seconds = sorted(sums_by_second)
    table = np.array([sums_by_second[s] for s in seconds]).reshape(-1, len(SUMS))
    with np.errstate(invalid="ignore", divide="ignore"):
        smile = np.round(table[:, 1] / table[:, 0], 4)
        valence = np.round(table[:, 3] / table[:, 2], 4)
    return LiveSnapshot(
        ad_id=ad_id,
        watching=len(sessions),
        seconds=seconds,
        frames=[int(n) for n in table[:, 0]],
        smile=[None if not np.isfinite(v) else float(v) for v in smile],
        valence=[None if not np.isfinite(v) else float(v) for v in valence],
    )


class LocalTally:
    """Embedded mode: the tally of this process (which stores every frame)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[tuple[int, int], tuple[dict[int, np.ndarray], set[int]]] = {}

    def add(self, tallies: list[BatchTally], bucket: int) -> None:
        with self.lock:
            for stale in [key for key in self.buckets if key[1] < bucket - WINDOW_S // BUCKET_S]:
                del self.buckets[stale]
            for tally in tallies:
                sums, sessions = self.buckets.setdefault((tally.ad_id, bucket), ({}, set()))
                for second, row in zip(tally.seconds.tolist(), tally.sums, strict=True):
                    sums[second] = sums.get(second, 0.0) + row
                sessions.update(tally.sessions)

    def snapshot(self, ad_id: int, buckets: range) -> LiveSnapshot:
        merged: dict[int, np.ndarray] = {}
        sessions: set[int] = set()
        with self.lock:
            for bucket in buckets:
                sums, seen = self.buckets.get((ad_id, bucket), ({}, set()))
                for second, row in sums.items():
                    merged[second] = merged.get(second, 0.0) + row
                sessions |= seen
        return snapshot_of(ad_id, merged, sessions)


class RedisTally:
    """Production: the tally shared by every worker, one hash (sums) and one set (sessions) per ad and
    bucket, expiring once out of the window."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def keys(ad_id: int, bucket: int) -> tuple[str, str]:
        return f"analytics:live:tally:{ad_id}:{bucket}", f"analytics:live:watching:{ad_id}:{bucket}"

    def add(self, tallies: list[BatchTally], bucket: int) -> None:
        expire_s = WINDOW_S + 2 * BUCKET_S
        with self.redis.pipeline(transaction=False) as pipe:
            for tally in tallies:
                sums_key, sessions_key = self.keys(tally.ad_id, bucket)
                for second, row in zip(tally.seconds.tolist(), tally.sums.tolist(), strict=True):
                    for name, value in zip(SUMS, row, strict=True):
                        if value:
                            pipe.hincrbyfloat(sums_key, f"{second}:{name}", value)
                pipe.sadd(sessions_key, *tally.sessions)
                pipe.expire(sums_key, expire_s)
                pipe.expire(sessions_key, expire_s)
            pipe.execute()

    def snapshot(self, ad_id: int, buckets: range) -> LiveSnapshot:
        with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hgetall(self.keys(ad_id, bucket)[0])
            pipe.sunion([self.keys(ad_id, bucket)[1] for bucket in buckets])
            *hashes, sessions = pipe.execute()
        merged: dict[int, np.ndarray] = {}
        for fields in hashes:
            for field, value in fields.items():
                second, name = field.decode().split(":")
                row = merged.setdefault(int(second), np.zeros(len(SUMS)))
                row[SUMS.index(name)] += float(value)
        return snapshot_of(ad_id, merged, {int(s) for s in sessions})


live_tally: ModeDependent[LocalTally | RedisTally] = ModeDependent(embedded=LocalTally, production=RedisTally)


def do_record_live(rows: Iterable[FrameResult], now: float | None = None) -> list[int]:
    """Add stored rows to the live tally; returns the ads they belong to."""
    tallies = tally_rows(rows)
    if tallies:
        live_tally().add(tallies, current_bucket(now))
    return [tally.ad_id for tally in tallies]


def live_snapshot(ad_id: int, now: float | None = None) -> LiveSnapshot:
    """What the ad's live view shows now."""
    return live_tally().snapshot(ad_id, window_buckets(now))


def do_show_live(rows: list[FrameResult]) -> None:
    """On capture's frames_stored (signals.py), once the rows are committed: tally them and tell their ads'
    live views. Never raises: the rows are stored and acked, and the exact rollups show them on their interval
    anyway."""

    def show() -> None:
        try:
            notify_frames_stored(do_record_live(rows))
        except Exception:
            logger.exception("live tally of %d stored rows failed", len(rows))

    transaction.on_commit(show)
