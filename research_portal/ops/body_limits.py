"""Request-body limits, enforced before a body is read (docs/security.md, "Request bodies").

One policy, `body_limit_for(path)`: how many bytes a route accepts from anyone, and how many more it accepts
from a caller who passes its gate (the ad-upload routes: an admin of the study; staff in Django admin).
Two enforcement points apply it, so that neither the server nor Django reads past it:

- `BodyLimitMiddleware`, the outermost layer of the ASGI application (research_portal/asgi.py): 413 from
  Content-Length before anything is read, and 413 as soon as a streamed (chunked) body runs past the limit;
  it then tells the application the client left, so Django stops reading. Servers that stream bodies to
  the application (uvicorn, hypercorn) never receive more than the limit.
- Daphne receives a request's whole body before it calls the application at all (twisted keeps a body
  over 100 kB in a temporary file), so `install_daphne_body_limits` applies the same policy inside daphne's
  request object as the bytes arrive: the 413 goes out as soon as the headers declare too much, or as soon
  as the body passes the limit, and nothing past it is stored.

A refused connection is half-closed: the client reads the 413 and the end of the stream, and what it still
sends is read and dropped (never stored) for at most BODY_LIMIT_LINGER_S, then the connection is closed.
Closing at once with unread input would reset it, and the client could lose the answer (as nginx's
lingering close).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie

from research_portal.accounts.sessions import user_for_session_key
from research_portal.capture.views import MAX_CHECK_FRAME_BYTES
from research_portal.setup.views import UPLOAD_OVERHEAD_BYTES  # the view's own allowance
from research_portal.studies.permissions import studies_managed_by

logger = logging.getLogger(__name__)

Gate = Callable[[str, dict[str, str]], bool]  # (session key, the route's path parameters) -> allowed
# Daphne pauses reading while a gate is asked; what had already arrived (one socket read) is held meanwhile.
GATE_WAIT_BYTES = 256 * 1024


@dataclass(frozen=True)
class BodyLimit:
    route: str
    open_bytes: int  # what anyone may send
    gated_bytes: int = 0  # what a caller passing `gate` may send
    gate: Gate | None = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def most_bytes(self) -> int:
        return max(self.open_bytes, self.gated_bytes if self.gate is not None else 0)


# ---- the policy ------------------------------------------------------------------------------------------


def form_bytes() -> int:
    return settings.BODY_LIMIT_FORM_BYTES


def signed_in_form_bytes() -> int:
    return settings.BODY_LIMIT_SIGNED_IN_BYTES


def ad_upload_bytes() -> int:
    return settings.AD_MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD_BYTES


def camera_check_frame_bytes() -> int:
    return MAX_CHECK_FRAME_BYTES + 4096  # the JPEG is the whole body; slack for nothing else


def may_upload_ads(session_key: str, params: dict[str, str]) -> bool:
    """The session signs in an admin of the study (the rule of accounts.permissions)."""

    user = user_for_session_key(session_key)
    return studies_managed_by(user).filter(pk=int(params["study_id"])).exists()


def is_staff_session(session_key: str, params: dict[str, str]) -> bool:
    """The session signs in an active staff user (Django admin is theirs alone)."""

    user = user_for_session_key(session_key)
    return bool(user.is_authenticated and user.is_active and user.is_staff)


# First match wins; a path matching none is an anonymous form's (sign-in, invitations, participant pages).
ROUTES: list[tuple[re.Pattern[str], Callable[[dict[str, str]], BodyLimit]]] = [
    (
        re.compile(r"/studies/(?P<study_id>[0-9]{1,18})/ads/"),
        lambda p: BodyLimit("ad upload", form_bytes(), ad_upload_bytes(), may_upload_ads, p),
    ),
    (
        re.compile(r"/admin/studies/(?:study|ad)/(?:add|[^/]+/change)/"),
        lambda p: BodyLimit("admin ad upload", form_bytes(), ad_upload_bytes(), is_staff_session, p),
    ),
    (re.compile(r"/admin/login/"), lambda p: BodyLimit("sign-in form", form_bytes())),
    (re.compile(r"/p/[^/]+/check/frame"), lambda p: BodyLimit("check frame", camera_check_frame_bytes())),
    (
        re.compile(r"/(?:studies|admin|accounts/team|accounts/members)/.*"),
        lambda p: BodyLimit("signed-in form", signed_in_form_bytes()),
    ),
]


def body_limit_for(path: str) -> BodyLimit:
    """The limit of the route `path` (the request path without the root path, percent-decoded, as Django
    routes it)."""
    for pattern, limit in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return limit(match.groupdict())
    return BodyLimit("form", form_bytes())


async def gate_allows(limit: BodyLimit, session_key: str) -> bool:
    if limit.gate is None or not session_key:
        return False
    try:
        return await database_sync_to_async(limit.gate)(session_key, limit.params)
    except Exception:  # e.g. the database is away: no large body, the small limit still applies
        logger.exception("body-limit gate of %s failed", limit.route)
        return False


def refusal_text(limit: BodyLimit, allowed: int) -> bytes:
    text = f"Request body too large: the {limit.route} address accepts at most {allowed} bytes."
    if limit.gate is not None and allowed < limit.gated_bytes:
        text += " Larger uploads need a signed-in admin of the study."
    return (text + "\n").encode()


def route_path(path: str, root_path: str) -> str:
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length header's value; None without one; ValueError for a malformed or repeated one."""
    values = {value.strip() for name, value in headers if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not all(value.isdigit() for value in values):
        raise ValueError("bad Content-Length")
    return int(values.pop())


def session_key_from(headers: list[tuple[bytes, bytes]]) -> str:
    cookies = {}
    for name, value in headers:
        if name.lower() == b"cookie":
            cookies.update(parse_cookie(value.decode("latin-1")))
    return cookies.get(settings.SESSION_COOKIE_NAME, "")


# ---- ASGI ------------------------------------------------------------------------------------------------


async def _respond(send: Callable[[dict], Awaitable[None]], status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: the route's body limit before the application reads anything (module docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit_for(route_path(scope["path"], scope.get("root_path", "")))
        try:
            declared = declared_length(scope["headers"])
        except ValueError:
            await _respond(send, 400, b"Malformed Content-Length.\n")
            return
        allowed = limit.open_bytes
        if limit.gate is not None and (declared is None or declared > allowed):
            if await gate_allows(limit, session_key_from(scope["headers"])):
                allowed = limit.gated_bytes
        if declared is not None and declared > allowed:
            await _respond(send, 413, refusal_text(limit, allowed))
            return
        body = _LimitedBody(limit, allowed, receive, send)
        await self.app(scope, body.receive, body.send)


class _LimitedBody:
    """Counts the body as the application reads it; past the limit: 413, and the client "left"."""

    def __init__(self, limit: BodyLimit, allowed: int, receive: Callable, send: Callable) -> None:
        self.limit, self.allowed = limit, allowed
        self._receive, self._send = receive, send
        self.received = 0
        self.refused = False
        self.response_started = False

    async def receive(self) -> dict:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.allowed:
                self.refused = True
                if not self.response_started:
                    await _respond(self._send, 413, refusal_text(self.limit, self.allowed))
                return {"type": "http.disconnect"}  # Django stops reading and answers nothing itself
        return message

    async def send(self, message: dict) -> None:
        if self.refused:
            return  # the 413 is the answer
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


# ---- daphne ----------------------------------------------------------------------------------------------


def refusal_response(status: int, body: bytes) -> bytes:
    reason = {400: b"Bad Request", 413: b"Content Too Large"}[status]
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, reason, len(body))
    )
    return head + body


class DaphneBodyLimits:
    """Mixed into daphne's WebRequest (a twisted Request) by install_daphne_body_limits. Twisted calls
    gotLength once the headers are in and handleContentChunk for every piece of the body; daphne's `process`
    hands the request to the application only after the whole body."""

    body_refused = False
    gate_pending = False
    process_waiting = False

    def gotLength(self, length: int | None) -> None:
        self.body_received = 0
        self.body_declared = length
        self.body_limit = body_limit_for(self._limit_path())
        self.body_allowed = self.body_limit.open_bytes
        if length is not None and length > self.body_limit.most_bytes:
            self._refuse_body()
            return
        super().gotLength(length)
        if self.body_limit.gate is not None and (length is None or length > self.body_allowed):
            self._start_gate()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return  # read and dropped while the refused connection drains
        self.body_received += len(data)
        # While the gate is being asked the transport is paused; what had already arrived is held.
        held = GATE_WAIT_BYTES if self.gate_pending else 0
        if self.body_received > max(self.body_allowed, held):
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.body_refused:
            super().requestReceived(command, path, version)

    def process(self):
        if self.body_refused:
            return None
        if self.gate_pending:  # a small body arrived before the gate answered: wait for it
            self.process_waiting = True
            return None
        return super().process()

    def _limit_path(self) -> str:
        raw = getattr(self.channel, "_path", b"") or b""
        try:
            path = unquote(raw.split(b"?", 1)[0].decode("ascii"))
        except UnicodeDecodeError:
            return ""  # daphne answers 400 for such a path; the smallest limit meanwhile
        root = self.requestHeaders.getRawHeaders(b"daphne-root-path")
        root_path = unquote(root[0].decode("ascii", "replace")) if root else self.server.root_path
        return route_path(path, root_path or "")

    def _start_gate(self) -> None:
        self.gate_pending = True
        self.channel.transport.pauseProducing()
        cookie = self.received_cookies.get(settings.SESSION_COOKIE_NAME.encode(), b"")
        try:
            task = asyncio.get_running_loop().create_task(
                gate_allows(self.body_limit, cookie.decode("latin-1"))
            )
        except RuntimeError:  # not on daphne's asyncio reactor: no large bodies
            self._gate_decided(False)
            return
        task.add_done_callback(self._gate_done)

    def _gate_done(self, task: asyncio.Task) -> None:
        self._gate_decided(not task.cancelled() and task.exception() is None and bool(task.result()))

    def _gate_decided(self, allowed: bool) -> None:
        self.gate_pending = False
        if self.body_refused or self.channel is None:  # refused meanwhile, or the client left
            return
        if allowed:
            self.body_allowed = self.body_limit.gated_bytes
        too_much = self.body_received > self.body_allowed or (
            self.body_declared is not None and self.body_declared > self.body_allowed
        )
        if too_much:
            self._refuse_body()
            return
        self.channel.transport.resumeProducing()
        if self.process_waiting:
            self.process_waiting = False
            super().process()

    def _refuse_body(self) -> None:
        from twisted.internet import reactor  # daphne's (asyncio) reactor, installed by then

        self.body_refused = True
        content = getattr(self, "content", None)
        if content is not None:
            content.close()  # drops a temporary file twisted may have opened
        self.content = io.BytesIO()
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        transport = self.channel.transport
        transport.write(refusal_response(413, refusal_text(self.body_limit, self.body_allowed)))
        half_close = getattr(transport, "loseWriteConnection", None)  # TCP has it; not every transport
        if half_close is not None:
            half_close()
        transport.resumeProducing()  # keep draining (and dropping) until the client stops
        reactor.callLater(settings.BODY_LIMIT_LINGER_S, transport.abortConnection)
        logger.info(
            "request body refused: %s, limit %d bytes, declared %s",
            self.body_limit.route,
            self.body_allowed,
            self.body_declared,
        )


def install_daphne_body_limits() -> None:
    """Make daphne build its requests with DaphneBodyLimits (its HTTP factory looks the class up by name in
    daphne.http_protocol for every connection). Idempotent; without daphne installed, nothing to do."""
    try:
        from daphne import http_protocol
    except ImportError:
        return
    if issubclass(http_protocol.WebRequest, DaphneBodyLimits):
        return
    http_protocol.WebRequest = type("BodyLimitedWebRequest", (DaphneBodyLimits, http_protocol.WebRequest), {})
