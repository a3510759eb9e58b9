"""Thin views: look up what the user may see (accounts.permissions), read the filters (services), compute
(dashboard / exports), respond. GETs only read: rollups are maintained by their writers and periodic work."""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache, wraps
from itertools import islice
from pathlib import Path

import plotly
from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from research_portal.accounts.permissions import ad_for_viewer, studies_visible_to, study_for_viewer
from research_portal.analytics.dashboard import build_ad_dashboard, build_study_overview
from research_portal.analytics.exports import EXPORTERS
from research_portal.analytics.services import InvalidFilters, check_filters
from research_portal.privacy.audit import do_audit
from research_portal.privacy.models import AuditLog

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def filter_error_page(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return render(request, "analytics/error.html", {"error": error}, status=400)


def filter_error_json(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return JsonResponse({"error": str(error)}, status=400)


def filter_error_text(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return HttpResponse(str(error), status=400, content_type="text/plain; charset=utf-8")


def refuses_bad_filters(respond: Callable[[HttpRequest, InvalidFilters], HttpResponse]) -> Callable:
    """The view's check_filters(request.GET) refused the query: answer 400 with the reason, as `respond`
    words it for that view (a page, JSON, plain text). The view reads the filters after its access check,
    so a study or ad the user may not see is a 404 whatever its query."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except InvalidFilters as error:
                return respond(request, error)

        return wrapper

    return decorator


def timed_json(build: Callable[[], dict]) -> JsonResponse:
    started = time.perf_counter()
    payload = build()
    response = JsonResponse(payload, json_dumps_params={"allow_nan": False})
    response["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@login_required
def study_list(request: HttpRequest) -> HttpResponse:
    studies = studies_visible_to(request.user).select_related("organization").prefetch_related("ads")
    return render(request, "analytics/study_list.html", {"studies": studies})


@require_GET
@login_required
@refuses_bad_filters(filter_error_page)
def study_overview(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_viewer(request.user, study_id)
    payload = build_study_overview(study, check_filters(request.GET))
    return render(
        request, "analytics/study.html", {"study": study, "payload": payload, **live_context(request)}
    )


@require_GET
@login_required
@refuses_bad_filters(filter_error_json)
def study_overview_data(request: HttpRequest, study_id: int) -> JsonResponse:
    study = study_for_viewer(request.user, study_id)
    filters = check_filters(request.GET)
    return timed_json(lambda: build_study_overview(study, filters))


@require_GET
@login_required
@refuses_bad_filters(filter_error_page)
def ad_dashboard(request: HttpRequest, ad_id: int) -> HttpResponse:
    ad = ad_for_viewer(request.user, ad_id)
    filters = check_filters(request.GET)
    started = time.perf_counter()
    payload = build_ad_dashboard(ad, filters)
    response = render(request, "analytics/ad.html", {"ad": ad, "payload": payload, **live_context(request)})
    response["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@require_GET
@login_required
@refuses_bad_filters(filter_error_json)
def ad_dashboard_data(request: HttpRequest, ad_id: int) -> JsonResponse:
    ad = ad_for_viewer(request.user, ad_id)
    filters = check_filters(request.GET)
    return timed_json(lambda: build_ad_dashboard(ad, filters))


@require_GET
@login_required
@refuses_bad_filters(filter_error_text)
def ad_export(request: HttpRequest, ad_id: int, kind: str) -> HttpResponse:
    ad = ad_for_viewer(request.user, ad_id)
    if kind not in EXPORTERS:
        raise Http404("No such export.")
    filters = check_filters(request.GET)
    lines = EXPORTERS[kind](ad, filters)
    do_audit(
        request.user, AuditLog.Action.EXPORT, ad.study, export=kind, ad=ad.pk, filters=filters.to_query()
    )
    response = StreamingHttpResponse(streaming_body(request, lines), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="ad-{ad.pk}-{kind}.csv"'
    return response


@require_GET
@login_required
def ad_video(request: HttpRequest, ad_id: int) -> HttpResponse:
    """The ad video for analysts, with HTTP Range support so the player can seek when the chart is clicked."""
    ad = ad_for_viewer(request.user, ad_id)
    if not ad.video:
        raise Http404("This ad has no video.")
    try:
        size = ad.video.size
    except OSError as missing:
        raise Http404("The video file is missing.") from missing
    content_type = {"webm": "video/webm", "ogv": "video/ogg"}.get(
        ad.video.name.rsplit(".", 1)[-1].lower(), "video/mp4"
    )
    byte_range = parse_range(request.headers.get("Range", ""), size)
    if byte_range == "unsatisfiable":
        response = HttpResponse(f"The requested range is outside the video ({size} bytes).", status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = byte_range or (0, size - 1)
    handle = ad.video.open("rb")
    handle.seek(start)
    response = StreamingHttpResponse(
        streaming_body(request, file_chunks(handle, end - start + 1)),
        status=206 if byte_range else 200,
        content_type=content_type,
    )
    response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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


def file_chunks(handle, length: int, block: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while length > 0:
            data = handle.read(min(block, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        handle.close()


def streaming_body(request: HttpRequest, items: Iterator) -> Iterator | AsyncIterator:
    """Under ASGI, pull from the sync generator in batches on Django's sync thread (where its database cursor
    lives), so a large export streams instead of being collected in memory first."""
    if not isinstance(request, ASGIRequest):
        return items

    def next_batch() -> list:
        return list(islice(items, 500))

    async def batches() -> AsyncIterator:
        while batch := await sync_to_async(next_batch, thread_sensitive=True)():
            for item in batch:
                yield item

    return batches()


def live_context(request: HttpRequest) -> dict:
    return {"plotly_url": reverse("analytics:plotly-js") + f"?v={plotly.__version__}"}


@cache
def plotly_bytes() -> tuple[bytes, bytes]:
    raw = PLOTLY_JS.read_bytes()
    return raw, gzip.compress(raw, compresslevel=6)


@require_GET
def plotly_js(request: HttpRequest) -> HttpResponse:
    """plotly.min.js from the installed plotly package (no CDN); versioned URL, cached for a year."""
    raw, compressed = plotly_bytes()
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response = HttpResponse(compressed, content_type="text/javascript; charset=utf-8")
        response["Content-Encoding"] = "gzip"
    else:
        response = HttpResponse(raw, content_type="text/javascript; charset=utf-8")
    response["Vary"] = "Accept-Encoding"
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
