"""Channel-layer group sends from synchronous code: web threads, embedded analysis threads, Celery workers.

Sockets register their server's event loop (remember_server_loop) so that threads of the same process hand
their sends to it: the in-memory layer's queues belong to that loop and are not thread-safe. Everywhere
else (a Celery worker) sends go through one long-lived event loop in a background thread of the process, so
the Redis layer keeps its connections (a fresh loop per call would connect anew every time: ~9 ms).
"""

from __future__ import annotations

import asyncio
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by sockets when they connect: the event loop of the ASGI server in this process."""
    global _server_loop
    _server_loop = loop


def send_group_event(group: str, message: dict) -> None:
    """Send one message to a channel-layer group; returns once it is handed to the layer."""
    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        await layer.group_send(group, message)

    loop = _server_loop
    if loop is not None and loop.is_running():
        if _loop_running_in_this_thread():
            # Called on the server loop itself (e.g. sync code run inline): schedule, do not block it.
            loop.create_task(send_all())
        else:
            asyncio.run_coroutine_threadsafe(send_all(), loop).result(timeout=10)
    elif _loop_running_in_this_thread():
        # Sync code called from inside an event loop's thread (e.g. a test driving a browser) cannot block
        # on the loop; send from a helper thread instead.
        threading.Thread(target=async_to_sync(send_all), daemon=True).start()
    else:  # a Celery worker: no server loop here
        asyncio.run_coroutine_threadsafe(send_all(), _sender_loop()).result(timeout=10)


_sender: tuple[int, asyncio.AbstractEventLoop] | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop:
    """This process's background loop for layer sends (made after fork: a prefork child gets its own)."""
    global _sender
    with _sender_lock:
        if _sender is None or _sender[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer-sends", daemon=True).start()
            _sender = (os.getpid(), loop)
        return _sender[1]


def _loop_running_in_this_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
