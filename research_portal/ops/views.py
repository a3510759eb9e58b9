"""Probes for load balancers and orchestrators (no sign-in; exempt from the HTTPS redirect, see settings), and
the capture path's metrics for operators and scrapers."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from research_portal.capture.batching import all_batchers
from research_portal.capture.flow import queue_is_full, read_capture_load
from research_portal.capture.queueing import analysis_backend
from research_portal.ops.checks import run_checks
from research_portal.ops.metrics import PROMETHEUS_CONTENT_TYPE, prometheus_text

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else (no database, no Redis, no model)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database, Redis (if configured) and the emotion model all answer, else 503;
    the body is `{check: {"ok", "detail", "ms"}}` either way."""
    results = run_checks()
    body = {name: result.as_json() for name, result in results.items()}
    ready = all(result.ok for result in results.values())
    if not ready:
        failed = sorted(name for name, result in results.items() if not result.ok)
        logger.warning("not ready: %s", ", ".join(failed), extra={"checks": body})
    return JsonResponse(body, status=200 if ready else 503)


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The capture path's load: queue depth, frames/s queued and stored, workers, and this web process's
    sockets and capture-rate scale. Staff, or `Authorization: Bearer $PORTAL_METRICS_TOKEN` (scrapers).
    JSON by default; `?format=prometheus` gives the text exposition format."""
    if not may_read_metrics(request):
        return JsonResponse({"error": "staff sign-in or metrics token required"}, status=403)
    try:
        snapshot = capture_metrics()
    except Exception as error:  # Redis away: say so, with the status a scraper treats as a failed scrape
        logger.warning("metrics unavailable", exc_info=True)
        return JsonResponse({"error": f"capture load unavailable: {type(error).__name__}"}, status=503)
    if request.GET.get("format") == "prometheus":
        return HttpResponse(prometheus_text(snapshot), content_type=PROMETHEUS_CONTENT_TYPE)
    return JsonResponse(snapshot)


def may_read_metrics(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = settings.PORTAL_METRICS_TOKEN
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(offered.encode(), token.encode())


def capture_metrics() -> dict:
    load = read_capture_load(analysis_backend())
    return {
        "capture": load.as_dict(),
        "queue_bound_frames": settings.CAPTURE_MAX_QUEUE_FRAMES,
        "queue_full": queue_is_full(load),
        "web_process": web_process_state(),
    }


def web_process_state() -> dict:
    """This process's sockets, frames not yet queued (and how long the oldest has waited), frames refused
    because their values could not be stored, and capture-rate scale (one batcher per event loop)."""
    batchers = all_batchers()
    return {
        "capture_sockets": sum(len(batcher.sockets) for batcher in batchers),
        "buffered_frames": sum(len(batcher.frames) for batcher in batchers),
        "oldest_frame_age_s": round(max((b.oldest_frame_age_s() for b in batchers), default=0.0), 3),
        "unstorable_frames": sum(batcher.unstorable_frames for batcher in batchers),
        "fps_scale": min((batcher.fps_scale for batcher in batchers), default=1.0),
    }
