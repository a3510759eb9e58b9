from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from research_portal.ops import views as ops

urlpatterns = [
    path("", RedirectView.as_view(url="/studies/", permanent=False)),
    # Pages link their icon (static/favicon.*); this answers browsers and tools that ask at the root anyway.
    path("favicon.ico", RedirectView.as_view(url=f"{settings.STATIC_URL}favicon.ico", permanent=True)),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("research_portal.accounts.urls")),
    path("studies/", include("research_portal.setup.urls")),
    path("", include("research_portal.capture.urls")),
    path("analytics/", include("research_portal.analytics.urls")),
]
