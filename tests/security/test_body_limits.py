"""Request bodies are limited per route before they are read (docs/security.md, L3): a declared oversized body
gets 413 before it is sent, a streamed (chunked) one as soon as it passes the limit, nothing past the limit
reaches a temporary file, and only an admin of the study may send an ad-sized body to its upload address.

Against a real daphne, as deployed, over raw sockets (daphne buffers a body before it calls the application,
so the limit is applied inside it); in-process through the whole ASGI application for BodyLimitMiddleware,
which any server that streams bodies to the application (uvicorn, hypercorn) relies on: nothing is read past
the limit; and Django's own limit."""

from __future__ import annotations

import os
import re
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.test import Client

from research_portal.accounts.models import Organization, Role
from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import Study
from tests.support.people import member
from tests.support.processes import Service, free_port
from tests.support.services import service_env, start_daphne

MiB = 1024 * 1024
FORM_LIMIT = 16 * 1024  # BODY_LIMIT_FORM_BYTES's default
AD_LIMIT = MiB  # AD_MAX_UPLOAD_BYTES on the test servers; its route accepts it + 1 MiB of form


# ---- raw HTTP ----------------------------------------------------------------------------------------------


def request_head(path: str, length: int | None, cookie: str = "", extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/octet-stream"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if cookie:
        lines.append(f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # keep what the kernel absorbs small
    return sock


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


def read_answer(sock: socket.socket, timeout_s: float = 20) -> bytes:
    """What the server sends until it ends the stream (or the timeout)."""
    data, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if not readable:
            if b"\r\n\r\n" in data and b"Connection: close" not in data and b"connection: close" not in data:
                break  # a keep-alive answer is complete once its headers and (short) body are in
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def answer_ready(sock: socket.socket, wait_s: float = 0.0) -> bool:
    return bool(select.select([sock], [], [], wait_s)[0])


def declare_and_wait(port: int, path: str, length: int, cookie: str = "") -> tuple[int, bytes]:
    """Declare `length` bytes, send none of them: the status (before the body was sent) and the answer."""
    with connect(port) as sock:
        sock.sendall(request_head(path, length, cookie))
        assert answer_ready(sock, 20), f"no answer to a declared body of {length} bytes on {path}"
        answer = read_answer(sock)
    return status_of(answer), answer


def stream_chunked(port: int, path: str, total: int, cookie: str = "", chunk: int = 4096) -> tuple[int, int]:
    """Send a chunked body of up to `total` bytes, watching for an early answer; (status, bytes sent when it
    came). A complete body is terminated and then answered normally."""
    sent, deadline = 0, time.monotonic() + 30
    with connect(port) as sock:
        sock.sendall(request_head(path, None, cookie))
        while sent < total and time.monotonic() < deadline:
            piece = b"x" * min(chunk, total - sent)
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            if answer_ready(sock, 0.02):
                break
        else:
            if sent >= total:
                sock.sendall(b"0\r\n\r\n")
        answer = read_answer(sock)
    return status_of(answer), sent


def send_declared(port: int, path: str, body: bytes, cookie: str = "") -> int:
    with connect(port) as sock:
        sock.sendall(request_head(path, len(body), cookie) + body)
        return status_of(read_answer(sock))


# ---- servers -----------------------------------------------------------------------------------------------


def open_temp_bytes(pid: int, folder: Path) -> int:
    """Bytes in the files under `folder` the process holds open (Python's temporary files are unlinked at
    once, so only /proc shows them), plus the files still listed there."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith(str(folder)) and Path(target).name not in NOT_REQUEST_DATA:
                total += os.stat(fd).st_size
        except OSError:
            continue
    listed = (path for path in folder.rglob("*") if path.is_file() and path.name not in NOT_REQUEST_DATA)
    return total + sum(path.stat().st_size for path in listed)


# Files in TMPDIR that hold no request data: ONNX Runtime writes a small `.ses` file when it loads (the web
# process loads the model for the camera check).
NOT_REQUEST_DATA = {".ses"}


@pytest.fixture
def server_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "server-tmp"
    folder.mkdir()
    return folder


def server_env(postgres: dict, redis_url: str, server_tmp: Path) -> dict[str, str]:
    return {
        **service_env(postgres, redis_url),
        "TMPDIR": str(server_tmp),
        "AD_MAX_UPLOAD_BYTES": str(AD_LIMIT),
        "BODY_LIMIT_LINGER_S": "2",
    }


@pytest.fixture
def daphne(postgres, redis_url, server_tmp, tmp_path) -> Iterator[tuple[int, Service]]:
    port = free_port()
    server = start_daphne(server_env(postgres, redis_url, server_tmp), port, tmp_path / "daphne.log")
    yield port, server
    server.stop()


@pytest.fixture
def paths(acme) -> dict[str, str]:
    """Addresses anyone can post to, each with the small form limit."""
    participant = ParticipantSession.objects.create(study=acme.study, external_participant_id="p1")
    return {
        "portal sign-in": "/accounts/login/",
        "admin sign-in": "/admin/login/",
        "invitation": f"/accounts/invite/{'x' * 43}/",
        "participant entry": f"/s/{acme.study.public_id}/",
        "consent": f"/p/{participant.token}/consent/",
        "ad upload (anonymous)": f"/studies/{acme.study.pk}/ads/",
        "no such page": "/no/such/page/",
    }


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


# ---- daphne ------------------------------------------------------------------------------------------------


def test_daphne_refuses_a_declared_oversized_body_before_it_is_sent(daphne, paths, server_tmp):
    port, server = daphne
    for name, path in paths.items():
        for declared in (400 * MiB, FORM_LIMIT + 1):
            status, answer = declare_and_wait(port, path, declared)
            assert status == 413, (name, declared, answer[:300])
            assert b"at most 16384 bytes" in answer
    # Within the limit the request reaches the application as before (here: 403, no CSRF token).
    assert send_declared(port, paths["portal sign-in"], b"username=a&password=b") == 403
    assert send_declared(port, paths["participant entry"], b"x" * 1000) == 403
    assert open_temp_bytes(server.process.pid, server_tmp) == 0


def test_daphne_stops_a_chunked_body_at_the_limit_and_stores_none_of_the_rest(daphne, paths, server_tmp):
    port, server = daphne
    for name in ("portal sign-in", "participant entry", "consent", "no such page"):
        status, sent = stream_chunked(port, paths[name], 64 * MiB)
        assert status == 413, name
        assert sent < 2 * MiB, f"{name}: {sent} bytes went out before the 413"
    # A declared 400 MiB body sent anyway: drained for the linger time, dropped, never in a temporary file.
    largest, dropped = 0, 0
    with connect(port) as sock:
        sock.sendall(request_head(paths["portal sign-in"], 400 * MiB))
        started = time.monotonic()
        try:
            while time.monotonic() - started < 6:
                sock.sendall(b"y" * 65536)
                dropped += 65536
                largest = max(largest, open_temp_bytes(server.process.pid, server_tmp))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server once the linger time passed
        assert time.monotonic() - started < 6, "the refused connection was never closed"
    assert dropped > FORM_LIMIT and largest == 0
    assert open_temp_bytes(server.process.pid, server_tmp) == 0
    assert server.process.poll() is None  # still serving
    assert send_declared(port, paths["portal sign-in"], b"username=a&password=b") == 403


def test_only_an_admin_of_the_study_may_send_an_ad_sized_body(daphne, acme, server_tmp, ad_video_file):
    port, server = daphne
    admin = member(acme.organization, Role.ADMIN, "ada")
    analyst = member(acme.organization, Role.ANALYST, "ana")
    rival = member(Organization.objects.create(name="Rival"), Role.ADMIN, "rival")
    draft = Study.objects.create(organization=acme.organization, name="Draft")
    upload = f"/studies/{draft.pk}/ads/"
    ad_sized = AD_LIMIT + AD_LIMIT // 2  # over the form limit, within the ad limit (+ 1 MiB of form)
    for cookie in ("", session_cookie(analyst), session_cookie(rival), "x" * 32):
        assert declare_and_wait(port, upload, ad_sized, cookie)[0] == 413
        assert stream_chunked(port, upload, ad_sized, cookie)[0] == 413
    ada = session_cookie(admin)
    # The admin's body is read; the view then answers (403: no CSRF token in this raw request).
    assert send_declared(port, upload, b"z" * ad_sized, ada) == 403
    assert stream_chunked(port, upload, ad_sized, ada, chunk=64 * 1024)[0] == 403
    assert declare_and_wait(port, upload, 2 * AD_LIMIT + 1, ada)[0] == 413  # past the ad limit: nobody
    assert stream_chunked(port, upload, 3 * AD_LIMIT, ada, chunk=64 * 1024)[0] == 413
    # Another study's address: ada manages Acme's studies only.
    rival_study = Study.objects.create(organization=Organization.objects.get(name="Rival"), name="R")
    assert declare_and_wait(port, f"/studies/{rival_study.pk}/ads/", ad_sized, ada)[0] == 413

    # A real upload through daphne: the set-up page's form, its CSRF token, the video (over 16 KiB).
    assert ad_video_file.stat().st_size > FORM_LIMIT
    status = upload_video(port, draft.pk, ada, ad_video_file)
    assert status == 302 and draft.ads.count() == 1
    assert open_temp_bytes(server.process.pid, server_tmp) == 0


def upload_video(port: int, study_id: int, cookie: str, video: Path) -> int:
    with connect(port) as sock:
        head = f"GET /studies/{study_id}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        sock.sendall((head + f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}\r\n\r\n").encode())
        page = read_answer(sock).decode(errors="replace")
    csrf_cookie = re.search(r"csrftoken=([A-Za-z0-9]+)", page)[1]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    boundary = uuid.uuid4().hex
    fields = [("csrfmiddlewaretoken", token), ("title", "Spring ad")]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{video.name}"\r\n'
        "Content-Type: video/webm\r\n\r\n"
    ).encode()
    body += video.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /studies/{study_id}/ads/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
        f"Referer: http://127.0.0.1:{port}/studies/{study_id}/\r\n"
        f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}; csrftoken={csrf_cookie}\r\n\r\n"
    )
    with connect(port) as sock:
        sock.sendall(head.encode() + body)
        return status_of(read_answer(sock, timeout_s=60))


def test_the_check_frame_address_takes_a_camera_frame_and_no_more(daphne, acme):
    port, _server = daphne
    session = ParticipantSession.objects.create(study=acme.study, external_participant_id="p2")
    path = f"/p/{session.token}/check/frame"
    assert send_declared(port, path, b"x" * 500 * 1024) != 413  # a frame-sized body reaches the view
    assert declare_and_wait(port, path, 600 * 1024)[0] == 413


# ---- in process --------------------------------------------------------------------------------------------


def http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def test_the_middleware_answers_413_without_reading_the_body():
    from research_portal.asgi import application

    scope = http_scope("/accounts/login/", [(b"content-length", str(400 * MiB).encode())])
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b"x" * 1024, "more_body": True})
    start = await communicator.receive_output(timeout=5)
    assert start["type"] == "http.response.start" and start["status"] == 413
    body = await communicator.receive_output(timeout=5)
    assert b"at most 16384 bytes" in body["body"]
    assert communicator.input_queue.qsize() == 1  # the body message was never taken
    await communicator.wait(timeout=5)

    malformed = http_scope("/accounts/login/", [(b"content-length", b"12"), (b"content-length", b"99")])
    communicator = ApplicationCommunicator(application, malformed)
    assert (await communicator.receive_output(timeout=5))["status"] == 400
    await communicator.wait(timeout=5)


async def test_the_middleware_stops_reading_a_streamed_body_past_the_limit():
    """What a server that streams bodies to the application (uvicorn, hypercorn) gets: the body is read
    only up to the limit, then 413, and Django is told the client left."""
    from research_portal.asgi import application

    communicator = ApplicationCommunicator(application, http_scope("/s/some-study/", []))  # chunked
    for _ in range(8):
        await communicator.send_input({"type": "http.request", "body": b"x" * 4096, "more_body": True})
    start = await communicator.receive_output(timeout=10)
    assert start["status"] == 413
    await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    assert communicator.input_queue.qsize() == 3  # 4 x 4 KiB is the limit; the 5th went past; 3 never read


@pytest.mark.django_db(transaction=True)
async def test_the_middleware_lets_an_admin_of_the_study_send_an_ad_sized_body(acme, settings, monkeypatch):
    from channels.db import database_sync_to_async
    from django.db import connections

    from research_portal.asgi import application

    settings.AD_MAX_UPLOAD_BYTES = AD_LIMIT
    # Django runs each request's sync code in a thread of its own: let it close its connection afterwards.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    ada = await database_sync_to_async(lambda: session_cookie(member(acme.organization, Role.ADMIN, "ada")))()
    length = [(b"content-length", str(AD_LIMIT).encode())]
    try:
        for cookie, status in (("", 413), (ada, 403)):  # 403: the view's CSRF check, after the whole body
            headers = [*length, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]
            communicator = ApplicationCommunicator(
                application, http_scope(f"/studies/{acme.study.pk}/ads/", headers)
            )
            for _ in range(16):
                await communicator.send_input(
                    {"type": "http.request", "body": b"z" * (AD_LIMIT // 16), "more_body": True}
                )
            await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
            assert (await communicator.receive_output(timeout=30))["status"] == status
            await communicator.wait(timeout=30)
    finally:
        await database_sync_to_async(connections.close_all)()


def test_django_refuses_form_data_over_its_own_limit(client, acme):
    client.force_login(member(acme.organization, Role.ADMIN, "ada"))
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == MiB
    response = client.post("/studies/new/", {"name": "x" * (MiB + 1)})
    assert response.status_code == 400
    assert client.post("/studies/new/", {"name": ""}).status_code in (200, 400)  # an ordinary form error
