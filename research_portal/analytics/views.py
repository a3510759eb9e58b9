"""Thin views: look up what the user may see (accounts.permissions), read the filters (services), compute
(dashboard / exports), respond. GETs only read: rollups are maintained by their writers and periodic work."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from functools import cache, wraps
from pathlib import Path

import plotly
from django.contrib.auth.decorators import login_required
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

from research_portal.analytics.ad_comparison import (
    AdPairQuery,
    ad_choices,
    build_ad_comparison,
    check_comparable_ads,
    comparison_to_choose,
    parse_ad_pair_query,
)
from research_portal.analytics.attention import TURNED_TO_SCREEN
from research_portal.analytics.dashboard import build_ad_dashboard, build_study_overview
from research_portal.analytics.definitions import ATTENTION_THRESHOLD
from research_portal.analytics.exports import (
    EXPORTERS,
    Table,
    ad_pair_export,
    session_frame_export,
    write_table,
)
from research_portal.analytics.report import build_ad_report
from research_portal.analytics.services import InvalidFilters, parse_filters
from research_portal.analytics.sessions import (
    parse_session_query,
    session_detail,
    session_for_study,
    session_list,
)
from research_portal.media import streaming_body, video_response
from research_portal.privacy.audit import do_audit
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad
from research_portal.studies.permissions import (
    ad_for_viewer,
    studies_managed_by,
    studies_visible_to,
    study_for_viewer,
)

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def filter_error_page(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return render(request, "analytics/error.html", {"error": error}, status=400)


def filter_error_json(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return JsonResponse({"error": str(error)}, status=400)


def filter_error_text(request: HttpRequest, error: InvalidFilters) -> HttpResponse:
    return HttpResponse(str(error), status=400, content_type="text/plain; charset=utf-8")


def refuses_bad_filters(respond: Callable[[HttpRequest, InvalidFilters], HttpResponse]) -> Callable:
    """The view's parse_filters(request.GET) refused the query: answer 400 with the reason, as `respond`
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
    payload = build_study_overview(study, parse_filters(request.GET))
    return render(
        request, "analytics/study.html", {"study": study, "payload": payload, **live_context(request)}
    )


@require_GET
@login_required
@refuses_bad_filters(filter_error_json)
def study_overview_data(request: HttpRequest, study_id: int) -> JsonResponse:
    study = study_for_viewer(request.user, study_id)
    filters = parse_filters(request.GET)
    return timed_json(lambda: build_study_overview(study, filters))


@require_GET
@login_required
@refuses_bad_filters(filter_error_page)
def ad_dashboard(request: HttpRequest, ad_id: int) -> HttpResponse:
    ad = ad_for_viewer(request.user, ad_id)
    filters = parse_filters(request.GET)
    started = time.perf_counter()
    payload = build_ad_dashboard(ad, filters)
    context = {
        "ad": ad,
        "payload": payload,
        "turned_to_screen": TURNED_TO_SCREEN,
        "attention_threshold": ATTENTION_THRESHOLD,
        **live_context(request),
    }
    response = render(request, "analytics/ad.html", context)
    response["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@require_GET
@login_required
@refuses_bad_filters(filter_error_json)
def ad_dashboard_data(request: HttpRequest, ad_id: int) -> JsonResponse:
    ad = ad_for_viewer(request.user, ad_id)
    filters = parse_filters(request.GET)
    return timed_json(lambda: build_ad_dashboard(ad, filters))


CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def export_response(request: HttpRequest, table: Table, file_format: str, name: str) -> StreamingHttpResponse:
    """The table as a streamed download, `name`.csv or `name`.parquet."""
    written = write_table(table, file_format)
    body = (
        # A Parquet piece is a whole row group: one at a time, or a batch would hold much of the file.
        streaming_body(request, written, batch=1 if file_format == "parquet" else 500)
    )
    response = StreamingHttpResponse(body, content_type=CONTENT_TYPES[file_format])
    response["Content-Disposition"] = f'attachment; filename="{name}.{file_format}"'
    return response


@require_GET
@login_required
@refuses_bad_filters(filter_error_text)
def ad_export(request: HttpRequest, ad_id: int, kind: str, file_format: str = "csv") -> HttpResponse:
    ad = ad_for_viewer(request.user, ad_id)
    if kind not in EXPORTERS:
        raise Http404("No such export.")
    filters = parse_filters(request.GET)
    table = EXPORTERS[kind](ad, filters)
    do_audit(
        request.user,
        AuditLog.Action.EXPORT,
        ad.study,
        export=kind,
        format=file_format,
        ad=ad.pk,
        filters=filters.to_query(),
    )
    return export_response(request, table, file_format, f"ad-{ad.pk}-{kind}")


@require_GET
@login_required
@refuses_bad_filters(filter_error_text)
def ad_report(request: HttpRequest, ad_id: int) -> HttpResponse:
    """The ad's report as one PDF (analytics/report.py) for the dashboard's filters: a file to forward to
    stakeholders who never sign in."""
    ad = ad_for_viewer(request.user, ad_id)
    filters = parse_filters(request.GET)
    pdf = build_ad_report(ad, filters)
    do_audit(
        request.user,
        AuditLog.Action.EXPORT,
        ad.study,
        export="report",
        format="pdf",
        ad=ad.pk,
        filters=filters.to_query(),
    )
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="ad-{ad.pk}-report.pdf"'
    response["Cache-Control"] = "no-store"
    return response


def ad_pair_for_viewer(user, query: AdPairQuery) -> tuple[Ad | None, Ad | None]:
    """The two ads of a comparison that the user may read (Http404 otherwise), once both are chosen
    checked comparable (InvalidFilters: 400)."""
    ad_a = ad_for_viewer(user, query.ad_a) if query.ad_a else None
    ad_b = ad_for_viewer(user, query.ad_b) if query.ad_b else None
    if ad_a and ad_b:
        check_comparable_ads(ad_a, ad_b)
    return ad_a, ad_b


def ad_pair_payload(ad_a: Ad | None, ad_b: Ad | None, query: AdPairQuery) -> dict:
    if ad_a and ad_b:
        return build_ad_comparison(ad_a, ad_b, query)
    return comparison_to_choose([ad_a, ad_b], query)


@require_GET
@login_required
@refuses_bad_filters(filter_error_page)
def ad_comparison_page(request: HttpRequest) -> HttpResponse:
    """Two ads side by side (analytics/ad_comparison.py): ?a=&b= ads of one organisation, chosen on the
    page from those the user may read (once one is chosen, its organisation's)."""
    query = parse_ad_pair_query(request.GET)
    ad_a, ad_b = ad_pair_for_viewer(request.user, query)
    ads = Ad.objects.filter(study__in=studies_visible_to(request.user))
    if chosen := ad_a or ad_b:
        ads = ads.filter(study__organization_id=chosen.study.organization_id)
    context = {
        "payload": ad_pair_payload(ad_a, ad_b, query),
        "choices": ad_choices(ads),
        **live_context(request),
    }
    return render(request, "analytics/compare.html", context)


@require_GET
@login_required
@refuses_bad_filters(filter_error_json)
def ad_comparison_data(request: HttpRequest) -> JsonResponse:
    query = parse_ad_pair_query(request.GET)
    ad_a, ad_b = ad_pair_for_viewer(request.user, query)
    return timed_json(lambda: ad_pair_payload(ad_a, ad_b, query))


@require_GET
@login_required
@refuses_bad_filters(filter_error_text)
def ad_comparison_export(request: HttpRequest, file_format: str = "csv") -> HttpResponse:
    query = parse_ad_pair_query(request.GET)
    ad_a, ad_b = ad_pair_for_viewer(request.user, query)
    if not (ad_a and ad_b):
        return filter_error_text(request, InvalidFilters("Choose two ads to compare (a and b)."))
    table = ad_pair_export(ad_a, ad_b, query)
    do_audit(
        request.user,
        AuditLog.Action.EXPORT,
        ad_a.study,
        export="ad-comparison",
        format=file_format,
        ads=[ad_a.pk, ad_b.pk],
        filters=query.filters.to_query(),
    )
    return export_response(request, table, file_format, f"ads-{ad_a.pk}-vs-{ad_b.pk}-comparison")


@require_GET
@login_required
@refuses_bad_filters(filter_error_page)
def session_list_page(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_viewer(request.user, study_id)
    listing = session_list(study, parse_session_query(request.GET))
    return render(request, "analytics/session_list.html", {"study": study, **listing})


@require_GET
@login_required
def session_page(request: HttpRequest, study_id: int, session_id: int) -> HttpResponse:
    study = study_for_viewer(request.user, study_id)
    session = session_for_study(study, session_id)
    if session is None:
        raise Http404("No such session.")
    context = {
        "study": study,
        "session": session,
        "can_manage": studies_managed_by(request.user).filter(pk=study.pk).exists(),
        **session_detail(session),
        **live_context(request),
    }
    return render(request, "analytics/session.html", context)


@require_GET
@login_required
def session_export(request: HttpRequest, study_id: int, session_id: int, file_format: str) -> HttpResponse:
    """One session's frame readings (the participant's own data, e.g. for an access request)."""
    study = study_for_viewer(request.user, study_id)
    session = session_for_study(study, session_id)
    if session is None:
        raise Http404("No such session.")
    table = session_frame_export(session)
    do_audit(
        request.user,
        AuditLog.Action.EXPORT,
        study,
        export="session-frames",
        format=file_format,
        session=session.pk,
    )
    return export_response(request, table, file_format, f"session-{session.pk}-frames")


@require_GET
@login_required
def ad_video(request: HttpRequest, ad_id: int) -> HttpResponse:
    """The ad video for analysts, with HTTP Range support so the player can seek when the chart is clicked."""
    return video_response(request, ad_for_viewer(request.user, ad_id).video)


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
