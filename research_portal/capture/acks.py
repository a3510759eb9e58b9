"""How "these frames are stored" gets from the analysing worker to the web process that queued the batch.

Each web process's FrameBatcher has an ack inbox, named in every batch it queues. With Celery the inbox is a
Redis list the batcher pops from (one message per stored batch; it expires if its web process is gone);
in embedded mode it is a callback on the batcher's event loop. One message per batch, not one per session:
a batch mixes ~one frame per session, and per-session channel-layer messages cost the web process about
1 ms per frame (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable

from django.conf import settings

from research_portal.redis_clients import redis_client

INBOX_PREFIX = "portal:acks:"
# Unread acks of a web process that died are useless after this (its clients resend to another one).
INBOX_TTL_S = 120
# A blocking pop wakes up this often, so a stopping batcher is never stuck in Redis for long.
POP_TIMEOUT_S = 1

Acks = list[list]  # [[session_id, [seq, ...]], ...]

_local_inboxes: dict[str, tuple[asyncio.AbstractEventLoop, Callable[[Acks], None]]] = {}
_local_lock = threading.Lock()


def new_inbox_name() -> str:
    return f"{INBOX_PREFIX}{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def open_local_inbox(name: str, loop: asyncio.AbstractEventLoop, deliver: Callable[[Acks], None]) -> None:
    """Embedded mode: acks posted to `name` by analysis threads run `deliver` on `loop`."""
    with _local_lock:
        _local_inboxes[name] = (loop, deliver)


def close_local_inbox(name: str) -> None:
    with _local_lock:
        _local_inboxes.pop(name, None)


def post_acks(inbox: str, acks: Acks) -> None:
    """Workers, after a batch is stored (one round trip). Raises if Redis is away: the caller logs it."""
    with _local_lock:
        local = _local_inboxes.get(inbox)
    if local is not None:
        loop, deliver = local
        loop.call_soon_threadsafe(deliver, acks)
        return
    if not settings.REDIS_URL:
        return  # the inbox's process is gone (embedded mode restarted): its clients resend
    pipe = redis_client(settings.REDIS_URL).pipeline(transaction=False)
    pipe.rpush(inbox, json.dumps(acks))
    pipe.expire(inbox, INBOX_TTL_S)
    pipe.execute()


async def receive_acks(client, inbox: str) -> Acks | None:
    """One message from a Redis inbox, or None after POP_TIMEOUT_S without one."""
    item = await client.blpop([inbox], timeout=POP_TIMEOUT_S)
    return None if item is None else json.loads(item[1])
