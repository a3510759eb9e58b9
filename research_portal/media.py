"""Serving media and large bodies, for every app: media types, the JPEG signature, ad videos with HTTP Range
support (so a player can seek), and response bodies streamed from a sync generator under ASGI."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from itertools import islice

from asgiref.sync import sync_to_async
from django.core.files import File
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse

JPEG_MAGIC = b"\xff\xd8\xff"  # every JPEG starts with SOI and the next marker's 0xFF
VIDEO_TYPES = {"webm": "video/webm", "ogv": "video/ogg"}  # anything else we accept is MP4
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK_BYTES = 256 * 1024


def video_content_type(name: str) -> str:
    return VIDEO_TYPES.get(name.rsplit(".", 1)[-1].lower(), "video/mp4")


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for a single `bytes=` range, None to send everything, "unsatisfiable"."""
    match = RANGE.match(header.strip())
    if not match or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(size - int(match[2]), 0), size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def file_chunks(handle, length: int, block: int = CHUNK_BYTES) -> Iterator[bytes]:
    try:
        while length > 0:
            data = handle.read(min(block, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        handle.close()


def streaming_body(request: HttpRequest, items: Iterator, batch: int = 500) -> Iterator | AsyncIterator:
    """Under ASGI, pull from the sync generator in batches of `batch` items on Django's sync thread (where its
    database cursor lives), so a large export streams instead of being collected in memory first. Small items
    (CSV lines, file chunks) go 500 at a time; large ones (a Parquet row group) one at a time."""
    if not isinstance(request, ASGIRequest):
        return items

    def next_batch() -> list:
        return list(islice(items, batch))

    async def batches() -> AsyncIterator:
        while batch := await sync_to_async(next_batch, thread_sensitive=True)():
            for item in batch:
                yield item

    return batches()


def video_response(request: HttpRequest, video: File) -> HttpResponse:
    """An ad video (a FileField's file), whole or the one byte range asked for; 404 when it is missing and
    416 (saying why) for a range past its end. Never cached: access is checked per request."""
    if not video:
        raise Http404("This ad has no video.")
    try:
        size = video.size
        handle = video.open("rb")
    except (OSError, ValueError) as missing:
        raise Http404("The video file is missing.") from missing
    byte_range = parse_range(request.headers.get("Range", ""), size)
    if byte_range == "unsatisfiable":
        handle.close()
        response = HttpResponse(f"The requested range is outside the video ({size} bytes).", status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = byte_range or (0, size - 1)
    handle.seek(start)
    response = StreamingHttpResponse(
        streaming_body(request, file_chunks(handle, end - start + 1)),
        status=206 if byte_range else 200,
        content_type=video_content_type(video.name),
    )
    response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store"
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
