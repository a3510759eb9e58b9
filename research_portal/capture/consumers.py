import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from research_portal.capture.acks import RejectedFrames
from research_portal.capture.batching import frame_batcher
from research_portal.capture.models import ParticipantSession, SessionEvent
from research_portal.capture.participation import do_record_event
from research_portal.capture.socket_limits import RATE_LIMITED, SocketLimits
from research_portal.capture.socket_session import open_capture, session_group, socket_client_address
from research_portal.capture.validation import AD_UNPLAYABLE, ReportRefused, do_fail_unplayable_ad
from research_portal.capture.wire import (
    UNPLAYABLE_REPORT,
    CaptureContext,
    CaptureRefused,
    FrameRejected,
    parse_frame,
    parse_page_event,
    parse_text_message,
    parse_unplayable_report,
)
from research_portal.events import remember_server_loop
from research_portal.log_format import hash_token

logger = logging.getLogger(__name__)

# The session takes no more frames (as open_capture refuses a session that ended).
CLOSE_SESSION_ENDED = 4003
CLOSE_FLOOD = 4008
# The same session opened in another tab or window: the newest connection wins.
CLOSE_OTHER_TAB = 4009
# Anything unexpected inside the consumer: the socket is closed (and cleaned up), never left open and dead.
CLOSE_INTERNAL_ERROR = 1011


class CaptureConsumer(AsyncWebsocketConsumer):
    """Receives a participant's webcam frames, validates them and hands them to the process's FrameBatcher.
    Acks them once their rows are stored (send_acks); relays the capture rate flow control asks for.

    Once the server closes the socket (`closed`), it sends nothing more and drops what the client still had
    on the way; the batcher forgets it at once."""

    context: CaptureContext | None = None
    # (seq, ad id) of the newest frame this socket took: how far the participant got, stored or not yet.
    newest_frame: tuple[int, int] | None = None
    closed = False
    released = False
    session_hash = ""

    async def connect(self) -> None:
        # Accept first: a close code only reaches the browser on an open socket.
        await self.accept()
        token = self.scope["url_route"]["kwargs"]["token"]
        self.session_hash = hash_token(token)  # logs name sessions by this, never by the token
        try:
            self.context = await database_sync_to_async(open_capture)(
                token, socket_client_address(self.scope)
            )
        except CaptureRefused as refused:
            logger.info("capture refused: %s", refused.code, extra={"session": self.session_hash})
            await self.send_json(
                {"type": "error", "code": refused.code, "seq": None, "detail": refused.detail}
            )
            await self.close(code=refused.close_code)
            return
        self.group = session_group(self.context.session_id)
        self.batcher = frame_batcher()  # (set before anything that may fail: release() needs both)
        # Tell any older connection of this session (another tab) to step aside.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_send(
            self.group, {"type": "capture.takeover", "channel": self.channel_name}
        )
        remember_server_loop(asyncio.get_running_loop())  # embedded analysis threads send acks through it
        self.next_new_seq = self.context.next_seq
        self.limits = SocketLimits.for_socket(self.context.fps, self.batcher.fps_scale)
        self.batcher.register(self, self.context.session_id)
        await self.send_json(
            {
                "type": "hello",
                "session": self.context.session_state,
                "fps": self.context.fps,
                "max_frame_bytes": self.context.max_frame_bytes,
                "next_seq": self.context.next_seq,
                "resend_after_s": self.batcher.resend_after_s,
            }
        )
        if self.batcher.fps_scale < 1.0:
            await self.apply_flow(self.batcher.fps_scale, self.batcher.resend_after_s)

    async def dispatch(self, message: dict) -> None:
        if message["type"] == "websocket.receive":
            if self.closed:
                return  # still on its way when we closed the socket: dropped quietly
            # Channels closes stale database connections before every message, a hop to a worker thread
            # each time: 16% of the web process's CPU at 200 frames/s. Frames never touch the database on
            # this thread (the batcher's database_sync_to_async calls close stale connections themselves),
            # so they skip it.
            binary = message.get("bytes") is not None
        else:
            binary = False
        try:
            if binary:
                await self.websocket_receive(message)
            else:
                await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            logger.exception(
                "capture socket failed on %s; closing it",
                message["type"],
                extra={"session": self.session_hash},
            )
            await self.close(code=CLOSE_INTERNAL_ERROR)

    async def capture_takeover(self, event: dict) -> None:
        if event["channel"] == self.channel_name or self.closed:
            return  # a socket steps aside once, however many newer ones announce themselves
        await self.close(
            code=CLOSE_OTHER_TAB,
            announce={"code": "other_tab", "detail": "This session was opened elsewhere."},
        )
        await database_sync_to_async(do_record_event)(self.context.session_id, SessionEvent.Name.OTHER_TAB)

    async def disconnect(self, code: int) -> None:
        # Frames already with the batcher are queued and stored anyway; their acks cannot reach this socket,
        # so the client resends them and the unique (session, seq) constraint drops the duplicates.
        self.closed = True
        await self.release()

    async def release(self) -> None:
        """Forget this socket everywhere (once); never raises, so a close always completes."""
        if self.released or self.context is None:
            return
        self.released = True
        self.batcher.unregister(self, self.context.session_id)
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        except Exception:  # the channel layer's Redis away: the group entry expires by itself
            logger.warning(
                "could not leave the session group", exc_info=True, extra={"session": self.session_hash}
            )

    async def close(
        self, code: int | None = None, reason: str | None = None, announce: dict | None = None
    ) -> None:
        """Close from our side (once): tell the client why first (`announce`: an error message's code and
        detail), forget the socket, then close."""
        if self.closed:
            return
        if announce is not None:
            await self.send_json({"type": "error", "seq": None, **announce})
        self.closed = True
        await self.release()
        try:
            await super().close(code=code, reason=reason)
        except Exception:  # the connection is gone already
            logger.info("close on a socket already gone", extra={"session": self.session_hash})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.context is None or self.closed:
            return
        if bytes_data is not None:
            await self.receive_frame(bytes_data)
        else:
            await self.receive_command(text_data or "")

    async def receive_frame(self, message: bytes) -> None:
        if not self.batcher.accepts_frames():
            # Not a rejection of the frame: seq null tells the client to keep it and resend it later.
            await self.send_json(
                {"type": "error", "code": "server_busy", "seq": None, "detail": "Retry later."}
            )
            return
        try:
            frame = parse_frame(message, self.context)
            self.limits.check_frame_rate()  # only frames that would be queued count against the rate
        except FrameRejected as rejected:
            await self.reject(rejected)
            return
        # A seq at or below the newest this socket took (or below where the session stood when it connected)
        # is a resend: the worker looks it up before running the model on it again.
        resend = frame.seq < self.next_new_seq
        self.next_new_seq = max(self.next_new_seq, frame.seq + 1)
        if self.newest_frame is None or frame.seq > self.newest_frame[0]:
            self.newest_frame = (frame.seq, frame.ad_id)
        self.batcher.add(frame.queued(self.context.session_id, self.context.store_frames, resend))

    async def send_acks(self, seqs: list[int]) -> None:
        """A worker stored these frames' rows (relayed by the batcher): the client may forget them."""
        await self.send_json({"type": "ack", "seqs": seqs})

    async def refuse_frames(self, rejected: RejectedFrames) -> None:
        """Frames this socket took whose values could not be stored (relayed by the batcher)."""
        for seq in rejected.seqs:
            await self.reject(FrameRejected(rejected.code, rejected.detail, seq))

    async def apply_flow(self, scale: float, resend_after_s: float) -> None:
        """Flow control: capture at this share of the study's rate, and resend frames unacked for this long,
        until told otherwise. The frames this socket may send follow the rate."""
        self.limits.set_flow_scale(scale)
        await self.send_json(
            {"type": "throttle", "fps": round(self.context.fps * scale, 2), "resend_after_s": resend_after_s}
        )

    async def receive_command(self, text: str) -> None:
        try:
            command = parse_text_message(text)
            if command["type"] == "finish":
                await self.close(code=1000)
                return
            if command["type"] == UNPLAYABLE_REPORT:
                await self.end_for_unplayable_ad(command)
                return
            event = parse_page_event(command, self.context)
            self.limits.check_event_rate()
        except FrameRejected as rejected:
            await self.reject(rejected)
            return
        await database_sync_to_async(do_record_event)(
            self.context.session_id, event.name, event.ad_id, event.media_time_ms
        )

    async def end_for_unplayable_ad(self, command: dict) -> None:
        """The browser cannot play an ad: when the report holds for the session (validation.py decides), the
        session ends Failed, the client is told (`ended`) and the socket closes (4003: no more frames).
        FrameRejected when it does not, or for a report beyond the event limit (each costs a transaction
        under the session's row lock)."""
        report = parse_unplayable_report(command)
        self.limits.check_event_rate()
        try:
            await database_sync_to_async(do_fail_unplayable_ad)(
                self.context.session_id, report.ad_id, report.error, report.media_time_ms, self.newest_frame
            )
        except ReportRefused as refused:
            raise FrameRejected(refused.code, refused.detail) from refused
        logger.info("ad unplayable: session failed", extra={"session": self.session_hash, "ad": report.ad_id})
        await self.send_json(
            {"type": "ended", "state": ParticipantSession.State.FAILED.value, "reason": AD_UNPLAYABLE}
        )
        await self.close(code=CLOSE_SESSION_ENDED)

    async def reject(self, rejected: FrameRejected) -> None:
        if rejected.code != RATE_LIMITED:  # (a flood of those would flood the log too; its close is logged)
            logger.warning(
                "frame rejected: %s",
                rejected.code,
                extra={"session": self.session_hash, "code": rejected.code, "seq": rejected.seq},
            )
        await self.send_json(
            {"type": "error", "code": rejected.code, "seq": rejected.seq, "detail": rejected.detail}
        )
        if self.limits.is_flood_after(rejected):
            logger.warning("capture socket flooding; closing it", extra={"session": self.session_hash})
            await self.close(code=CLOSE_FLOOD)

    async def send_json(self, content: dict) -> None:
        if self.closed:
            return
        try:
            await self.send(text_data=json.dumps(content))
        except Exception:  # the client went away under us; its disconnect follows
            logger.info("message not sent: the socket is gone", extra={"session": self.session_hash})
            self.closed = True
            await self.release()
