import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from research_portal.capture.batching import frame_batcher
from research_portal.capture.models import SessionEvent
from research_portal.capture.participation import do_record_event
from research_portal.capture.services import (
    CaptureContext,
    CaptureRefused,
    FrameRateLimiter,
    FrameRejected,
    check_frame,
    open_capture,
    session_group,
)
from research_portal.events import remember_server_loop
from research_portal.ops.logging import hash_token

logger = logging.getLogger(__name__)

# A minute of frames at 5 fps: what a browser resends after a typical network drop.
RESEND_BURST_FRAMES = 300
# Rejections tolerated per connection before we treat the client as broken or hostile.
MAX_REJECTIONS = 50
CLOSE_FLOOD = 4008
# The same session opened in another tab or window: the newest connection wins.
CLOSE_OTHER_TAB = 4009
# Page events the browser reports during viewing (stored as SessionEvent).
BROWSER_EVENTS = {
    SessionEvent.Name.TAB_HIDDEN,
    SessionEvent.Name.TAB_VISIBLE,
    SessionEvent.Name.CAMERA_STOPPED,
    SessionEvent.Name.CAMERA_RESUMED,
}


class CaptureConsumer(AsyncWebsocketConsumer):
    """Receives a participant's webcam frames, validates them and hands them to the process's FrameBatcher.
    Acks them once their rows are stored (send_acks); relays the capture rate flow control asks for."""

    context: CaptureContext | None = None

    async def connect(self) -> None:
        # Accept first: a close code only reaches the browser on an open socket.
        await self.accept()
        token = self.scope["url_route"]["kwargs"]["token"]
        try:
            self.context = await database_sync_to_async(open_capture)(token)
        except CaptureRefused as refused:
            logger.info("capture refused: %s", refused.code, extra={"session": hash_token(token)})
            await self.send_json(
                {"type": "error", "code": refused.code, "seq": None, "detail": refused.detail}
            )
            await self.close(code=refused.close_code)
            return
        self.session_hash = hash_token(token)  # logs name sessions by this, never by the token
        # Tell any older connection of this session (another tab) to step aside.
        self.group = session_group(self.context.session_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_send(
            self.group, {"type": "capture.takeover", "channel": self.channel_name}
        )
        remember_server_loop(asyncio.get_running_loop())  # embedded analysis threads send acks through it
        self.rejections = 0
        self.next_new_seq = self.context.next_seq
        self.limiter = FrameRateLimiter(self.context.fps, RESEND_BURST_FRAMES)
        self.batcher = frame_batcher()
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
        # Channels closes stale database connections before every message, a hop to a worker thread each
        # time: 16% of the web process's CPU at 200 frames/s. Frames never touch the database on this thread
        # (the batcher's database_sync_to_async calls close stale connections themselves), so they skip it.
        if message["type"] == "websocket.receive" and message.get("bytes") is not None:
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def capture_takeover(self, event: dict) -> None:
        if event["channel"] == self.channel_name:
            return
        await database_sync_to_async(do_record_event)(self.context.session_id, SessionEvent.Name.OTHER_TAB)
        await self.send_json(
            {
                "type": "error",
                "code": "other_tab",
                "seq": None,
                "detail": "This session was opened elsewhere.",
            }
        )
        await self.close(code=CLOSE_OTHER_TAB)

    async def disconnect(self, code: int) -> None:
        if self.context is None:
            return
        self.batcher.unregister(self, self.context.session_id)
        # Frames already with the batcher are queued and stored anyway; their acks cannot reach this socket,
        # so the client resends them and the unique (session, seq) constraint drops the duplicates.
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.context is None:
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
            if not self.limiter.allow():
                raise FrameRejected("rate_limited", "Too many frames; slow down.")
            frame = check_frame(message, self.context)
        except FrameRejected as rejected:
            await self.reject(rejected)
            return
        # A seq at or below the newest this socket took (or below where the session stood when it connected)
        # is a resend: the worker looks it up before running the model on it again.
        resend = frame.seq < self.next_new_seq
        self.next_new_seq = max(self.next_new_seq, frame.seq + 1)
        self.batcher.add(frame.to_payload(self.context.session_id, self.context.store_frames, resend))

    async def send_acks(self, seqs: list[int]) -> None:
        """A worker stored these frames' rows (relayed by the batcher): the client may forget them."""
        await self.send_json({"type": "ack", "seqs": seqs})

    async def apply_flow(self, scale: float, resend_after_s: float) -> None:
        """Flow control: capture at this share of the study's rate, and resend frames unacked for this long,
        until told otherwise."""
        await self.send_json(
            {"type": "throttle", "fps": round(self.context.fps * scale, 2), "resend_after_s": resend_after_s}
        )

    async def receive_command(self, text: str) -> None:
        try:
            command = json.loads(text)
        except ValueError:
            command = None
        if isinstance(command, dict) and command.get("type") == "finish":
            await self.close(code=1000)
            return
        if (
            isinstance(command, dict)
            and command.get("type") == "event"
            and command.get("name") in BROWSER_EVENTS
        ):
            ad_id = command.get("ad_id")
            media_time_ms = command.get("media_time_ms")
            await database_sync_to_async(do_record_event)(
                self.context.session_id,
                command["name"],
                ad_id if ad_id in self.context.ad_durations_ms else None,
                media_time_ms if isinstance(media_time_ms, int) and 0 <= media_time_ms < 2**31 else None,
            )
            return
        await self.reject(FrameRejected("bad_message", 'Text messages must be JSON like {"type": "finish"}.'))

    async def reject(self, rejected: FrameRejected) -> None:
        self.rejections += 1
        logger.warning(
            "frame rejected: %s",
            rejected.code,
            extra={"session": self.session_hash, "code": rejected.code, "seq": rejected.seq},
        )
        await self.send_json(
            {"type": "error", "code": rejected.code, "seq": rejected.seq, "detail": rejected.detail}
        )
        if self.rejections > MAX_REJECTIONS:
            await self.close(code=CLOSE_FLOOD)

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
