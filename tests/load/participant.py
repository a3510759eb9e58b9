"""One simulated participant: a WebSocket client that speaks the capture wire protocol like capture.js.

It works with the server acking frames once queued (before 2026-11 issue #7) and once stored (after):
frames stay in `unacked` until acked; an ack's time minus the frame's capture time is the client-side
latency. `throttle` changes the capture rate at once; `error` with seq null means "not stored, resend
later"; frames unacked for `resend_after_s` are resent (the server drops duplicates by (session, seq)).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import websockets
from websockets.exceptions import WebSocketException

HEADER = struct.Struct("!IIId")
# Close codes after which reconnecting is pointless (unknown token, not capturing, flood, other tab).
FATAL_CLOSE_CODES = {4001, 4003, 4008, 4009}
MAX_RECONNECTS = 3
RESEND_CHECK_S = 1.0
FINISH_CLOSE_TIMEOUT_S = 10.0


@dataclass
class Unacked:
    capture_ms: float
    media_time_ms: int
    frame_index: int
    sent_at: float  # monotonic time of the last (re)send


@dataclass
class ParticipantStats:
    sent: int = 0  # distinct frames captured and handed to the socket (resends not counted)
    resent: int = 0
    acked: int = 0  # distinct frames acked
    duplicate_acks: int = 0
    refused: int = 0  # errors with seq null (server_busy, rate_limited): frame not stored, resent later
    rejected: int = 0  # errors naming a seq: that frame is refused for good
    errors: Counter = field(default_factory=Counter)
    unacked_at_end: int = 0
    # (capture epoch ms, capture->ack ms) per acked frame, first ack only
    ack_latencies: list[tuple[float, float]] = field(default_factory=list)
    throttled_s: float = 0.0
    throttle_messages: int = 0
    min_fps: float = math.inf
    max_lag_ms: float = 0.0  # how late the generator sent a frame against its schedule
    sent_capture_ms: list[float] = field(default_factory=list)  # capture time of each distinct frame
    connect_ms: float = 0.0
    reconnects: int = 0
    close_code: int | None = None
    failure: str = ""


class Participant:
    def __init__(
        self,
        url: str,
        origin: str,
        ad_id: int,
        frames: list[bytes],
        fps: float,
        start_at: float,
        capture_at: float,
        stop_at: float,
        first_frame: int,
        resend_after_s: float,
        drain_timeout_s: float,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self.url = url
        self.origin = origin
        self.ad_id = ad_id
        self.frames = frames
        self.nominal_fps = fps
        self.fps = fps
        # monotonic times (asyncio's default loop clock is time.monotonic too): connect, first frame, stop
        self.start_at = start_at
        self.capture_at = capture_at
        self.stop_at = stop_at
        self.frame_index = first_frame
        self.resend_after_s = self.base_resend_after_s = resend_after_s
        self.drain_timeout_s = drain_timeout_s
        self.max_reconnects = max_reconnects
        self.stats = ParticipantStats(min_fps=fps)
        self.seq = 0
        self.unacked: dict[int, Unacked] = {}
        self.acked: set[int] = set()
        self.throttled_since: float | None = None
        self.wake: asyncio.Future | None = None
        self.drained = asyncio.Event()
        self.media_start_ms = 0.0

    # ---- throttle -------------------------------------------------------------------------------------

    def set_fps(self, fps: float) -> None:
        now = time.monotonic()
        self.stats.throttle_messages += 1
        self.stats.min_fps = min(self.stats.min_fps, fps)
        if fps < self.nominal_fps and self.throttled_since is None:
            self.throttled_since = now
        elif fps >= self.nominal_fps and self.throttled_since is not None:
            self.stats.throttled_s += now - self.throttled_since
            self.throttled_since = None
        self.fps = fps
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)  # obey at once: the capture loop recomputes its next frame time

    def set_resend_delay(self, seconds) -> None:
        """The server's `resend_after_s` (hello, throttle), never below this generator's own setting."""
        if seconds:
            self.resend_after_s = max(self.base_resend_after_s, float(seconds))

    def close_throttle(self) -> None:
        if self.throttled_since is not None:
            self.stats.throttled_s += time.monotonic() - self.throttled_since
            self.throttled_since = None

    # ---- messages -------------------------------------------------------------------------------------

    def frame_message(self, seq: int, entry: Unacked) -> bytes:
        header = HEADER.pack(seq, self.ad_id, entry.media_time_ms, entry.capture_ms)
        return header + self.frames[entry.frame_index]

    def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.stats.errors["bad_server_message"] += 1
            return
        kind = message.get("type")
        if kind == "ack":
            now_ms = time.time() * 1000
            for seq in message.get("seqs", ()):
                entry = self.unacked.pop(seq, None)
                if entry is None:
                    self.stats.duplicate_acks += 1
                    continue
                self.acked.add(seq)
                self.stats.acked += 1
                self.stats.ack_latencies.append((entry.capture_ms, now_ms - entry.capture_ms))
            if not self.unacked:
                self.drained.set()
        elif kind == "throttle":
            try:
                self.set_fps(max(0.0, float(message.get("fps"))))
                self.set_resend_delay(message.get("resend_after_s"))
            except (TypeError, ValueError):
                self.stats.errors["bad_throttle"] += 1
        elif kind == "error":
            code = str(message.get("code"))
            self.stats.errors[code] += 1
            seq = message.get("seq")
            if seq is None:
                self.stats.refused += 1  # not stored; the resend timer sends it again
            elif self.unacked.pop(seq, None) is not None:
                self.stats.rejected += 1
                if not self.unacked:
                    self.drained.set()

    async def read(self, ws) -> None:
        async for message in ws:
            if isinstance(message, str):
                self.on_text(message)

    # ---- sending --------------------------------------------------------------------------------------

    async def sleep_until(self, loop: asyncio.AbstractEventLoop, when: float | None) -> None:
        """Sleep until `when` (loop time) or until the rate changes, whichever comes first."""
        self.wake = loop.create_future()
        handle = None
        if when is not None:
            handle = loop.call_at(when, lambda fut=self.wake: fut.done() or fut.set_result(None))
        try:
            await self.wake
        finally:
            if handle is not None:
                handle.cancel()
            self.wake = None

    async def capture(self, ws, loop: asyncio.AbstractEventLoop, stop_loop: float) -> None:
        """Send frames at the current fps until stop time (loop clock); the schedule never drifts."""
        next_at = max(loop.time(), self.schedule_origin)
        while True:
            if next_at >= stop_loop:
                return
            if next_at > loop.time():
                fps = self.fps
                await self.sleep_until(loop, next_at)
                if self.fps != fps:  # throttled (or released) while waiting: re-plan from the last frame
                    next_at = self.last_sent_at + (1 / self.fps if self.fps > 0 else math.inf)
                    if not math.isfinite(next_at):
                        await self.sleep_until(loop, stop_loop)
                        next_at = loop.time() if self.fps > 0 else stop_loop
                    continue
            now = loop.time()
            self.stats.max_lag_ms = max(self.stats.max_lag_ms, (now - next_at) * 1000)
            capture_ms = time.time() * 1000
            seq = self.seq
            self.seq += 1
            entry = Unacked(
                capture_ms,
                int(capture_ms - self.media_start_ms),
                self.frame_index % len(self.frames),
                time.monotonic(),
            )
            self.frame_index += 1
            self.unacked[seq] = entry
            self.drained.clear()
            # Counted before the send: a frame whose send fails (the socket just broke) stays in `unacked`,
            # like a browser's resend buffer, and is resent after the reconnect; it was captured all the same.
            self.stats.sent += 1
            self.stats.sent_capture_ms.append(capture_ms)
            self.last_sent_at = next_at
            await ws.send(self.frame_message(seq, entry))
            next_at = next_at + (1 / self.fps if self.fps > 0 else math.inf)
            if not math.isfinite(next_at):
                await self.sleep_until(loop, stop_loop)
                next_at = loop.time() if self.fps > 0 else stop_loop

    async def resend_periodically(self, ws) -> None:
        """Resend frames unacked for resend_after_s, at most one second's worth of frames per check."""
        while True:
            await asyncio.sleep(RESEND_CHECK_S)
            now = time.monotonic()
            budget = max(1, math.ceil(self.nominal_fps))
            for seq, entry in list(self.unacked.items()):
                if budget == 0:
                    break
                if now - entry.sent_at >= self.resend_after_s and seq in self.unacked:
                    entry.sent_at = now
                    await ws.send(self.frame_message(seq, entry))
                    self.stats.resent += 1
                    budget -= 1

    async def session(self, ws, loop: asyncio.AbstractEventLoop) -> None:
        hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if hello.get("type") != "hello":
            self.on_text(json.dumps(hello))
            raise ConnectionError(f"no hello: {hello}")
        # A reconnect continues numbering where the server says (never below our own counter).
        self.seq = max(self.seq, int(hello.get("next_seq") or 0))
        self.set_resend_delay(hello.get("resend_after_s"))
        for entry in self.unacked.values():
            entry.sent_at = -math.inf  # resend everything unacked on the next check
        reader = asyncio.create_task(self.read(ws))
        resender = asyncio.create_task(self.resend_periodically(ws))
        try:
            capture = asyncio.create_task(self.capture(ws, loop, self.stop_at))
            done, _ = await asyncio.wait({capture, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:  # the server closed the socket while we were capturing
                capture.cancel()
                await asyncio.gather(capture, return_exceptions=True)
                reader.result()
                raise ConnectionError("closed by the server during capture")
            capture.result()
            # Drain: wait (bounded) for the outstanding acks; resends keep going meanwhile.
            if self.unacked:
                self.drained.clear()
                drain = asyncio.create_task(self.drained.wait())
                await asyncio.wait(
                    {drain, reader}, timeout=self.drain_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                drain.cancel()
            self.close_throttle()
            resender.cancel()
            if not reader.done():
                await ws.send(json.dumps({"type": "finish"}))
                # today's server flushes, acks the last batch and closes with 1000
                await asyncio.wait({reader}, timeout=FINISH_CLOSE_TIMEOUT_S)
        finally:
            resender.cancel()
            reader.cancel()
            await asyncio.gather(reader, resender, return_exceptions=True)

    async def run(self) -> ParticipantStats:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.start_at - time.monotonic()))
        self.media_start_ms = time.time() * 1000
        self.schedule_origin = self.capture_at
        self.last_sent_at = self.capture_at
        while True:
            started = time.monotonic()
            try:
                async with websockets.connect(
                    self.url,
                    origin=self.origin,
                    compression=None,  # browsers' deflate would not shrink JPEGs; daphne refuses it anyway
                    max_size=None,
                    ping_interval=None,
                    open_timeout=30,
                    close_timeout=5,
                ) as ws:
                    if not self.stats.connect_ms:
                        self.stats.connect_ms = (time.monotonic() - started) * 1000
                    await self.session(ws, loop)
                    self.stats.close_code = ws.close_code
                    break
            except (OSError, ConnectionError, WebSocketException, TimeoutError, ValueError) as error:
                code = getattr(getattr(error, "rcvd", None), "code", None)
                self.stats.close_code = code
                self.stats.reconnects += 1
                late = time.monotonic() > self.stop_at + self.drain_timeout_s
                if code in FATAL_CLOSE_CODES or self.stats.reconnects > self.max_reconnects or late:
                    self.stats.failure = f"{type(error).__name__}: {error}"
                    break
                await asyncio.sleep(1.0)
        self.close_throttle()
        self.stats.unacked_at_end = len(self.unacked)
        return self.stats
