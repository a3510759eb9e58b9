"""Where the frames of every capture socket in a web process meet, and leave as batches across sessions.

A batch leaves for the analysis backend when it holds settings.CAPTURE_FLUSH_MAX_FRAMES frames or its oldest
frame has waited settings.CAPTURE_FLUSH_INTERVAL_S: one task and one bulk insert per batch, whatever the
number of participants. Workers answer each batch with one message to this batcher's ack inbox (acks.py),
and the batcher acks each socket of this process. The same loop runs flow control once per
settings.CAPTURE_FLOW_INTERVAL_S: it reads the shared load (flow.read_capture_load), tells every socket of
the process the capture rate to use, and refuses new frames while the queue is at its bound. Frames
refused are not acked, so browsers resend them.

Only a transient failure (failures.is_transient: database or broker unreachable) keeps a batch here to be
tried again. Frames whose values cannot be stored are refused to their sockets (`unstorable`) and the rest
of the batch goes on, so one session's frames never hold up another's. The age of the oldest frame waiting
here (oldest_frame_age_s) is on /metrics and /readyz: a process whose frames stop leaving is visible.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Protocol

from asgiref.sync import sync_to_async
from channels.db import DatabaseSyncToAsync
from django.conf import settings

from research_portal.capture.acks import AckMessage, RejectedFrames, ack_inbox, new_inbox_name
from research_portal.capture.failures import describe_error, is_transient, rejected_by_session
from research_portal.capture.flow import next_fps_scale, queue_is_full, read_capture_load, resend_after_s
from research_portal.capture.queueing import analysis_backend, enqueue_frames
from research_portal.capture.wire import QueuedFrame

logger = logging.getLogger(__name__)

# After the broker refused a batch, wait this long before trying again (frames stay buffered meanwhile).
BROKER_RETRY_S = 1.0


class CaptureSocket(Protocol):
    async def apply_flow(self, scale: float, resend_after_s: float) -> None: ...

    async def send_acks(self, seqs: list[int]) -> None: ...

    async def refuse_frames(self, rejected: RejectedFrames) -> None: ...


class FrameBatcher:
    def __init__(self) -> None:
        self.frames: list[tuple[float, QueuedFrame]] = []  # (monotonic arrival time, frame)
        self.sockets: set[CaptureSocket] = set()
        self.sockets_by_session: dict[int, set[CaptureSocket]] = {}
        self.inbox = new_inbox_name()  # where workers send the acks of this process's batches
        self.wake = asyncio.Event()
        self.runner: asyncio.Task | None = None
        self.fps_scale = 1.0
        self.resend_after_s = settings.CAPTURE_RESEND_AFTER_S
        self.queue_full = False
        self.broker_retry_at = 0.0
        self.next_flow_check = 0.0
        # Arrival time of the oldest frame of the batch being queued right now (it left self.frames).
        self.in_flight_since: float | None = None
        self.unstorable_frames = 0  # refused to their sockets since the process started

    def oldest_frame_age_s(self, now: float | None = None) -> float:
        """How long the oldest frame not yet queued has waited here (0 when none waits). Safe to call from
        another thread (/readyz)."""
        now = time.monotonic() if now is None else now
        try:
            arrivals = [self.frames[0][0]]
        except IndexError:
            arrivals = []
        if self.in_flight_since is not None:
            arrivals.append(self.in_flight_since)
        return max(0.0, now - min(arrivals)) if arrivals else 0.0

    def accepts_frames(self) -> bool:
        """False while the shared queue is at its bound or this process holds its maximum of unsent frames."""
        return not self.queue_full and len(self.frames) < settings.CAPTURE_MAX_BUFFERED_FRAMES

    def add(self, frame: QueuedFrame) -> None:
        self.frames.append((time.monotonic(), frame))
        # The first frame sets a flush deadline the loop must start waiting for; a full batch leaves now.
        if len(self.frames) == 1 or len(self.frames) >= settings.CAPTURE_FLUSH_MAX_FRAMES:
            self.wake.set()
        self._ensure_running()

    def register(self, socket: CaptureSocket, session_id: int) -> None:
        self.sockets.add(socket)
        self.sockets_by_session.setdefault(session_id, set()).add(socket)
        self._ensure_running()

    def unregister(self, socket: CaptureSocket, session_id: int) -> None:
        self.sockets.discard(socket)
        same_session = self.sockets_by_session.get(session_id, set())
        same_session.discard(socket)
        if not same_session:
            self.sockets_by_session.pop(session_id, None)

    def _ensure_running(self) -> None:
        if self.runner is None or self.runner.done():
            self.runner = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Until no socket is left and every frame is queued: flush when due, check the flow when due."""
        close_inbox = ack_inbox().open(self.inbox, self.deliver_acks)
        try:
            while self.frames or self.sockets:
                await self._sleep_until_due()
                now = time.monotonic()
                try:
                    if self._flush_due(now):
                        await self.flush()
                    if now >= self.next_flow_check:
                        self.next_flow_check = now + settings.CAPTURE_FLOW_INTERVAL_S
                        await self.run_flow_control()
                except Exception:
                    # A fault of ours must not stop every socket's frames: log it and go on after a pause.
                    logger.exception("frame batcher step failed; going on")
                    await asyncio.sleep(BROKER_RETRY_S)
        finally:
            close_inbox()

    async def deliver_acks(self, message: AckMessage) -> None:
        """Stored frames -> an ack to each socket of this process whose frames they are; frames a worker
        could not store -> refused to their sockets."""
        for session_id, seqs in message.acks:
            for socket in list(self.sockets_by_session.get(session_id, ())):
                try:
                    await socket.send_acks(seqs)
                except Exception:  # a socket closing right now; its client resends what it lacks
                    logger.info("ack not delivered to a closing socket", exc_info=True)
        await self.deliver_refusals(message.rejected)

    async def deliver_refusals(self, rejected: Sequence[RejectedFrames]) -> None:
        for refused in rejected:
            self.unstorable_frames += len(refused.seqs)
            for socket in list(self.sockets_by_session.get(refused.session_id, ())):
                try:
                    await socket.refuse_frames(refused)
                except Exception:  # closing: its client resends them and is refused again
                    logger.info("refusal not delivered to a closing socket", exc_info=True)

    async def _sleep_until_due(self) -> None:
        due = [self.next_flow_check]
        if self.frames:
            due.append(max(self.frames[0][0] + settings.CAPTURE_FLUSH_INTERVAL_S, self.broker_retry_at))
        timeout = max(0.0, min(due) - time.monotonic())
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except TimeoutError:
            pass
        self.wake.clear()

    def _flush_due(self, now: float) -> bool:
        if not self.frames or now < self.broker_retry_at:
            return False
        full = len(self.frames) >= settings.CAPTURE_FLUSH_MAX_FRAMES
        return full or now >= self.frames[0][0] + settings.CAPTURE_FLUSH_INTERVAL_S

    async def flush(self) -> None:
        """Queue every due batch. On a transient failure (database or broker away) keep the frames (in
        order) and retry after a pause; frames refused because of their data go back to their sockets."""
        while self._flush_due(time.monotonic()):
            batch = self.frames[: settings.CAPTURE_FLUSH_MAX_FRAMES]
            del self.frames[: len(batch)]
            frames = [frame for _, frame in batch]
            self.in_flight_since = batch[0][0]
            try:
                # Off the shared sync thread (the broker write may take milliseconds); the DB connection
                # handling of database_sync_to_async closes what the pool thread leaves open.
                queue = DatabaseSyncToAsync(enqueue_frames, thread_sensitive=False)
                rejected = await queue(frames, self.inbox)
            except Exception as error:
                if is_transient(error):
                    logger.warning(
                        "could not queue a batch of %s frames (%s); keeping them",
                        len(batch),
                        describe_error(error),
                        exc_info=True,
                    )
                    self.frames[:0] = batch
                    self.broker_retry_at = time.monotonic() + BROKER_RETRY_S
                    return
                # Neither the surroundings nor data enqueue_frames could pin on some frames: retrying the
                # same batch would fail the same way and hold up every frame behind it.
                logger.exception("a batch of %s frames cannot be queued; refusing it", len(batch))
                rejected = rejected_by_session((frame.session_id, frame.seq) for frame in frames)
            finally:
                self.in_flight_since = None
            await self.deliver_refusals(rejected)

    async def run_flow_control(self) -> None:
        try:
            load = await sync_to_async(read_capture_load, thread_sensitive=False)(analysis_backend())
        except Exception:
            # The numbers live in Redis; while it is away, hold the current rate (the flush retries itself).
            logger.warning("flow control could not read the capture load", exc_info=True)
            return
        self.queue_full = queue_is_full(load)
        scale = next_fps_scale(self.fps_scale, load)
        resend = resend_after_s(load)
        if abs(scale - self.fps_scale) >= 0.01 or resend != self.resend_after_s:
            logger.info(
                "capture rate scale %.2f -> %.2f, resend after %g s",
                self.fps_scale,
                scale,
                resend,
                extra={"backlog_s": load.as_dict()["backlog_s"], "queue_frames": load.queue_frames},
            )
            self.fps_scale, self.resend_after_s = scale, resend
            for socket in list(self.sockets):
                try:
                    await socket.apply_flow(scale, resend)
                except Exception:  # closing right now; a new socket gets the rate in its hello
                    logger.info("throttle not delivered to a closing socket", exc_info=True)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FrameBatcher] = weakref.WeakKeyDictionary()


def frame_batcher() -> FrameBatcher:
    """The batcher of this process's event loop (one per ASGI server process)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = FrameBatcher()
    return batcher


def all_batchers() -> list[FrameBatcher]:
    """The batchers of this process (for /metrics; normally one)."""
    return list(_batchers.values())


def oldest_waiting_frame_age_s() -> float:
    """Across this process's batchers: how long its oldest frame not yet queued has waited (seconds)."""
    return max((batcher.oldest_frame_age_s() for batcher in all_batchers()), default=0.0)
