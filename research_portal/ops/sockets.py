"""The answer to a socket path that no route serves (docs/security.md, L11).

Channels' URLRouter raises for a path it cannot route, which a server turns into a failed handshake (a 500).
This route comes last: the socket is accepted, then closed with 4004, as the dashboards' sockets close for
an ad or study that does not exist, so a bad path gets a close code a browser can read.
"""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import re_path

CLOSE_NO_SUCH_SOCKET = 4004


class NoSuchSocket(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()  # a close code only reaches the browser on an open socket
        await self.close(code=CLOSE_NO_SUCH_SOCKET)


unknown_socket_route = re_path(r"", NoSuchSocket.as_asgi(), name="no-such-socket")
