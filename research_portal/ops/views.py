"""Probes for load balancers and orchestrators. No sign-in; exempt from the HTTPS redirect (settings)."""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from research_portal.ops.checks import run_checks

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
