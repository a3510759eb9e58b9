"""How "these frames are stored" gets from the analysing worker to the web process that queued the batch.

Each web process's FrameBatcher opens an ack inbox, named in every batch it queues (ack_inbox().open). In
production the inbox is a Redis list the batcher pops from (one message per stored batch; it expires if its
web process is gone); in embedded mode the analysing threads are in the batcher's process, and a message runs
the batcher's delivery on its event loop. One message per batch, not one per session: a batch mixes ~one
frame per session, and per-session channel-layer messages cost the web process about 1 ms per frame
(docs/scaling.md).

In Redis a message is the JSON list of acks, `[[session_id, [seq, ...]], ...]`; a batch with frames the
worker could not store because of their values (failures.store_isolating_bad_data) is sent as an object
instead, `{"acks": [...], "rejected": [[session_id, [seq, ...], code, detail], ...]}`, so the sockets refuse
those frames for good rather than leave them to be resent forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import redis

from research_portal.deployment import ModeDependent, async_redis_client

logger = logging.getLogger(__name__)

INBOX_PREFIX = "portal:acks:"
# Unread acks of a web process that died are useless after this (its clients resend to another one).
INBOX_TTL_S = 120
# A blocking pop wakes up this often, so a stopping batcher is never stuck in Redis for long.
POP_TIMEOUT_S = 1
# After Redis refused a pop, wait this long before the next (acks wait; browsers resend what stays unacked).
RECEIVE_RETRY_S = 1.0

Acks = list[list]  # [[session_id, [seq, ...]], ...]


@dataclass(frozen=True)
class RejectedFrames:
    """Frames of one session refused for good after the socket took them (their values cannot be stored);
    each socket of the session sends `{"type": "error", "code": code, "seq": seq, "detail": detail}`."""

    session_id: int
    seqs: tuple[int, ...]
    code: str
    detail: str


@dataclass(frozen=True)
class AckMessage:
    """What a worker says about one stored batch."""

    acks: Acks
    rejected: Sequence[RejectedFrames] = field(default_factory=tuple)


Deliver = Callable[[AckMessage], Awaitable[None]]


def new_inbox_name() -> str:
    return f"{INBOX_PREFIX}{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_ack_message(message: AckMessage) -> str:
    if not message.rejected:
        return json.dumps(message.acks)  # the normal case, as every web process reads it
    rejected = [[r.session_id, list(r.seqs), r.code, r.detail] for r in message.rejected]
    return json.dumps({"acks": message.acks, "rejected": rejected})


def decode_ack_message(raw: str | bytes) -> AckMessage:
    """Raises ValueError for a message that is neither form."""
    data = json.loads(raw)
    if isinstance(data, list):
        return AckMessage(data)
    if not isinstance(data, dict) or not isinstance(data.get("acks"), list):
        raise ValueError("not an ack message")
    try:
        rejected = tuple(
            RejectedFrames(int(session_id), tuple(int(seq) for seq in seqs), str(code), str(detail))
            for session_id, seqs, code, detail in data.get("rejected") or ()
        )
    except TypeError as error:
        raise ValueError(f"malformed rejections: {error}") from error
    return AckMessage(data["acks"], rejected)


class LocalAckInbox:
    """Embedded mode: messages posted to an open inbox run its delivery on the loop that opened it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listeners: dict[str, tuple[asyncio.AbstractEventLoop, Deliver]] = {}

    def open(self, name: str, deliver: Deliver) -> Callable[[], None]:
        """From the batcher's event loop; returns the function that closes the inbox."""
        loop = asyncio.get_running_loop()
        with self.lock:
            self.listeners[name] = (loop, deliver)

        def close() -> None:
            with self.lock:
                self.listeners.pop(name, None)

        return close

    def post(self, name: str, message: AckMessage) -> None:
        with self.lock:
            listener = self.listeners.get(name)
        if listener is None:
            return  # the inbox's batcher has stopped (its sockets are gone): their clients resend
        loop, deliver = listener
        loop.call_soon_threadsafe(lambda: loop.create_task(deliver(message)))


class RedisAckInbox:
    """Production: an inbox is a Redis list; workers push to it, its batcher pops from it."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def open(self, name: str, deliver: Deliver) -> Callable[[], None]:
        """From the batcher's event loop: relay the inbox's messages to `deliver` until closed."""
        relay = asyncio.get_running_loop().create_task(self._relay(name, deliver))
        return relay.cancel

    async def _relay(self, name: str, deliver: Deliver) -> None:
        client = async_redis_client()
        try:
            while True:
                try:
                    item = await client.blpop([name], timeout=POP_TIMEOUT_S)
                except redis.RedisError:
                    logger.warning("could not receive acks; retrying", exc_info=True)
                    await asyncio.sleep(RECEIVE_RETRY_S)
                    continue
                if item is None:
                    continue
                try:
                    message = decode_ack_message(item[1])
                except ValueError:
                    logger.exception("malformed message in the ack inbox; skipped")
                    continue
                await deliver(message)
        finally:
            await client.aclose()

    def post(self, name: str, message: AckMessage) -> None:
        """One round trip. Raises if Redis is away: the caller logs it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(name, encode_ack_message(message))
        pipe.expire(name, INBOX_TTL_S)
        pipe.execute()


ack_inbox: ModeDependent[LocalAckInbox | RedisAckInbox] = ModeDependent(
    embedded=LocalAckInbox, production=RedisAckInbox
)


def do_ack_stored(stored: list[tuple[int, int]], inbox: str, rejected: Sequence[RejectedFrames] = ()) -> None:
    """One message per batch to the ack inbox of the web process that queued it, which acks each session's
    socket (and refuses the `rejected` frames). `stored`: (session id, seq) pairs. A lost ack (the socket
    moved to another process, Redis away) costs only a resend, which the unique (session, seq) constraint
    absorbs, so failures are logged, never raised."""
    seqs_by_session: dict[int, list[int]] = defaultdict(list)
    for session_id, seq in stored:
        seqs_by_session[session_id].append(seq)
    acks = [[session_id, sorted(seqs)] for session_id, seqs in seqs_by_session.items()]
    try:
        ack_inbox().post(inbox, AckMessage(acks, tuple(rejected)))
    except Exception:
        logger.exception("could not ack stored frames of sessions %s", sorted(seqs_by_session))
