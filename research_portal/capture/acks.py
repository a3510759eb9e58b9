"""How "these frames are stored" gets from the analysing worker to the web process that queued the batch.

Each web process's FrameBatcher has an ack inbox, named in every batch it queues. With Celery the inbox is a
Redis list the batcher pops from (one message per stored batch; it expires if its web process is gone);
in embedded mode it is a callback on the batcher's event loop. One message per batch, not one per session:
a batch mixes ~one frame per session, and per-session channel-layer messages cost the web process about
1 ms per frame (docs/scaling.md).

A message is the JSON list of acks, `[[session_id, [seq, ...]], ...]`; a batch with frames the worker could
not store because of their values (services.store_isolating_bad_data) is sent as an object instead,
`{"acks": [...], "rejected": [[session_id, [seq, ...], code, detail], ...]}`, so the sockets refuse those
frames for good rather than leave them to be resent forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings

from research_portal.redis_clients import redis_client

INBOX_PREFIX = "portal:acks:"
# Unread acks of a web process that died are useless after this (its clients resend to another one).
INBOX_TTL_S = 120
# A blocking pop wakes up this often, so a stopping batcher is never stuck in Redis for long.
POP_TIMEOUT_S = 1

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


_local_inboxes: dict[str, tuple[asyncio.AbstractEventLoop, Callable[[AckMessage], None]]] = {}
_local_lock = threading.Lock()


def new_inbox_name() -> str:
    return f"{INBOX_PREFIX}{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def open_local_inbox(
    name: str, loop: asyncio.AbstractEventLoop, deliver: Callable[[AckMessage], None]
) -> None:
    """Embedded mode: messages posted to `name` by analysis threads run `deliver` on `loop`."""
    with _local_lock:
        _local_inboxes[name] = (loop, deliver)


def close_local_inbox(name: str) -> None:
    with _local_lock:
        _local_inboxes.pop(name, None)


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


def post_acks(inbox: str, acks: Acks, rejected: Sequence[RejectedFrames] = ()) -> None:
    """Workers, after a batch is stored (one round trip). Raises if Redis is away: the caller logs it."""
    message = AckMessage(acks, tuple(rejected))
    with _local_lock:
        local = _local_inboxes.get(inbox)
    if local is not None:
        loop, deliver = local
        loop.call_soon_threadsafe(deliver, message)
        return
    if not settings.REDIS_URL:
        return  # the inbox's process is gone (embedded mode restarted): its clients resend
    pipe = redis_client(settings.REDIS_URL).pipeline(transaction=False)
    pipe.rpush(inbox, encode_ack_message(message))
    pipe.expire(inbox, INBOX_TTL_S)
    pipe.execute()


async def receive_acks(client, inbox: str) -> AckMessage | None:
    """One message from a Redis inbox, or None after POP_TIMEOUT_S without one. Raises ValueError for a
    malformed message (it is consumed)."""
    item = await client.blpop([inbox], timeout=POP_TIMEOUT_S)
    return None if item is None else decode_ack_message(item[1])
