"""At most one rollup refresh per session per settings.ANALYTICS_ROLLUP_INTERVAL_S, however often its frames
are stored, and almost no bookkeeping per batch.

A refresh costs 12-17 ms of database work per session whatever the number of new frames, while a batch mixes
frames of many sessions (measured: refreshing every touched session per batch cost 3.6 ms per frame, more
than the model's 2.3 ms; per-session debounce with 4 Redis round trips and a Celery task per session cost
1.3 ms). So each stored batch only journals its (ad, second) keys per session and claims the sessions that
were not refreshed lately (one Redis round trip in all); claimed sessions are refreshed at once (leading
edge). Keys arriving inside a session's interval wait; a flusher thread in every analysing process claims
and refreshes them when the interval ends (trailing edge). Keys leave the journal only after their refresh
committed, so a worker that dies in between leaves them to another process's flusher, or to the periodic
reconcile (flush_all_pending).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

import redis
from django.conf import settings
from django.db import connections

from research_portal.analytics.rollups import do_mark_stale, do_refresh_and_notify
from research_portal.capture.models import FrameResult
from research_portal.deployment import ModeDependent

logger = logging.getLogger(__name__)

RolledKey = tuple[int | None, int]  # (ad id, or None for the baseline; second of the ad)
# How often each analysing process looks for sessions whose interval has ended.
FLUSH_TICK_S = 1.0


def rollup_interval_s() -> float:
    return float(settings.ANALYTICS_ROLLUP_INTERVAL_S)


def _encode(key: RolledKey) -> str:
    ad_id, second = key
    return f"{'b' if ad_id is None else ad_id}:{second}"


def _decode(member: bytes) -> RolledKey:
    ad, second = member.split(b":")
    return (None if ad == b"b" else int(ad), int(second))


class LocalJournal:
    """Embedded mode: one process analyses everything."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[int, set[RolledKey]] = {}
        self.claimed_until: dict[int, float] = {}

    def add_and_claim(self, touched: dict[int, set[RolledKey]], interval_s: float) -> list[int]:
        with self.lock:
            for session_id, keys in touched.items():
                self.keys.setdefault(session_id, set()).update(keys)
            return self._claim(list(touched), interval_s)

    def claim_due(self, interval_s: float) -> list[int]:
        with self.lock:
            return self._claim(list(self.keys), interval_s)

    def _claim(self, session_ids: list[int], interval_s: float) -> list[int]:
        now = time.monotonic()
        claimed = [sid for sid in session_ids if self.claimed_until.get(sid, 0.0) <= now]
        for session_id in claimed:
            self.claimed_until[session_id] = now + interval_s
        return claimed

    def peek(self, session_id: int) -> set[RolledKey]:
        with self.lock:
            return set(self.keys.get(session_id, ()))

    def remove(self, session_id: int, keys: set[RolledKey]) -> None:
        with self.lock:
            left = self.keys.get(session_id, set()) - keys
            if left:
                self.keys[session_id] = left
            else:
                self.keys.pop(session_id, None)

    def sessions(self) -> list[int]:
        with self.lock:
            return list(self.keys)


class RedisJournal:
    """Shared by every worker: a key set per session, an index of sessions with keys, a claim per session."""

    PREFIX = "analytics:rollups:"
    INDEX = PREFIX + "sessions"
    # Drop refreshed keys, and the session from the index when none is left, atomically (a batch may add
    # keys meanwhile: then the session stays indexed).
    REMOVE_SCRIPT = """
        redis.call('SREM', KEYS[1], unpack(ARGV, 2))
        if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
    """

    # Journal a batch's keys and claim its sessions in one command. KEYS: the index, then per session its key
    # set and its claim. ARGV: the claim's lifetime in ms, then per session its id, the number of its keys
    # and the keys. Returns the ids of the sessions claimed. (As a pipeline of 3 commands per session it
    # cost the worker 2.3 ms of CPU per 32-frame batch, mostly packing the commands; this is one.)
    ADD_AND_CLAIM_SCRIPT = """
        local claimed, arg, key = {}, 2, 2
        while arg <= #ARGV do
            local session, count = ARGV[arg], tonumber(ARGV[arg + 1])
            redis.call('SADD', KEYS[key], unpack(ARGV, arg + 2, arg + 1 + count))
            redis.call('SADD', KEYS[1], session)
            if redis.call('SET', KEYS[key + 1], 1, 'NX', 'PX', ARGV[1]) then
                claimed[#claimed + 1] = session
            end
            arg, key = arg + 2 + count, key + 2
        end
        return claimed
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.remove_script = self.redis.register_script(self.REMOVE_SCRIPT)
        self.add_and_claim_script = self.redis.register_script(self.ADD_AND_CLAIM_SCRIPT)

    def add_and_claim(self, touched: dict[int, set[RolledKey]], interval_s: float) -> list[int]:
        touched = {session_id: rolled for session_id, rolled in touched.items() if rolled}
        if not touched:
            return []
        keys, args = [self.INDEX], [max(1, int(interval_s * 1000))]
        for session_id, rolled in touched.items():
            keys += [f"{self.PREFIX}keys:{session_id}", f"{self.PREFIX}claim:{session_id}"]
            args += [session_id, len(rolled), *(_encode(key) for key in rolled)]
        return [int(session_id) for session_id in self.add_and_claim_script(keys=keys, args=args)]

    def claim_due(self, interval_s: float) -> list[int]:
        session_ids = [int(sid) for sid in self.redis.smembers(self.INDEX)]
        if not session_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        claim_ms = max(1, int(interval_s * 1000))
        for session_id in session_ids:
            pipe.set(f"{self.PREFIX}claim:{session_id}", 1, nx=True, px=claim_ms)
        return [sid for sid, won in zip(session_ids, pipe.execute(), strict=True) if won]

    def peek(self, session_id: int) -> set[RolledKey]:
        return {_decode(member) for member in self.redis.smembers(f"{self.PREFIX}keys:{session_id}")}

    def remove(self, session_id: int, keys: set[RolledKey]) -> None:
        if keys:
            self.remove_script(
                keys=[f"{self.PREFIX}keys:{session_id}", self.INDEX],
                args=[session_id, *(_encode(key) for key in keys)],
            )

    def sessions(self) -> list[int]:
        return [int(sid) for sid in self.redis.smembers(self.INDEX)]


rollup_journal: ModeDependent[LocalJournal | RedisJournal] = ModeDependent(
    embedded=LocalJournal, production=RedisJournal
)


def do_update_rollups(rows: Iterable[FrameResult]) -> None:
    """On capture's frames_stored (signals.py), after the bulk insert: update the rollups of the stored rows'
    sessions (at most once per session per interval, below) and tell live dashboards. Never raises: frames are
    already safe, so a failure only marks the sessions stale, and the next reconcile recomputes them from
    their raw frames."""
    touched: dict[int, set[tuple[int | None, int]]] = defaultdict(set)
    for row in rows:
        touched[row.session_id].add((row.ad_id, row.media_time_ms // 1000))
    try:
        submit_refreshes(touched)
    except Exception:
        logger.exception("rollups of sessions %s could not be scheduled; marked stale", sorted(touched))
        do_mark_stale(list(touched))


def submit_refreshes(touched: dict[int, set[RolledKey]]) -> None:
    """Called once per stored batch (do_update_rollups) with its (ad, second) keys per session."""
    interval = rollup_interval_s()
    if interval <= 0:
        for session_id, keys in touched.items():
            do_refresh_and_notify(session_id, keys)
        return
    ensure_flusher()
    for session_id in rollup_journal().add_and_claim(touched, interval):
        refresh_journaled(session_id)


def refresh_journaled(session_id: int) -> None:
    """Refresh every key journaled for a session this process has claimed."""
    keys = rollup_journal().peek(session_id)
    if keys and do_refresh_and_notify(session_id, keys):
        rollup_journal().remove(session_id, keys)


def flush_due() -> int:
    """The trailing edge: refresh the journaled sessions whose interval has ended. Returns sessions done."""
    claimed = rollup_journal().claim_due(rollup_interval_s())
    for session_id in claimed:
        refresh_journaled(session_id)
    return len(claimed)


def flush_all_pending() -> int:
    """Safety net (reconcile task): refresh every session with journaled keys, claimed or not."""
    sessions = rollup_journal().sessions()
    for session_id in sessions:
        refresh_journaled(session_id)
    return len(sessions)


_flusher_pid: int | None = None
_flusher_lock = threading.Lock()


def ensure_flusher() -> None:
    """One flusher thread per analysing process (started after fork, on its first stored batch)."""
    global _flusher_pid
    with _flusher_lock:
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()
    threading.Thread(target=_flush_forever, name="rollup-flusher", daemon=True).start()


def _flush_forever() -> None:
    global _flusher_pid
    while True:
        time.sleep(FLUSH_TICK_S)
        if rollup_interval_s() <= 0:  # debounce switched off: refreshes are immediate, nothing to flush
            with _flusher_lock:
                _flusher_pid = None
            return
        try:
            flush_due()
        except Exception:  # Redis or the database away: the keys stay journaled for the next tick
            logger.warning("rollup flush failed; will retry", exc_info=True)
        finally:
            connections.close_all()  # this thread's connection only
