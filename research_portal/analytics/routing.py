from channels.auth import AuthMiddlewareStack
from django.urls import path

from research_portal.analytics.consumers import AdDashboardConsumer, StudyOverviewConsumer

# The analyst's login session identifies them on the socket (AuthMiddlewareStack reads the session cookie).
websocket_urlpatterns = [
    path("ws/analytics/ads/<int:target_id>/", AuthMiddlewareStack(AdDashboardConsumer.as_asgi())),
    path(
        "ws/analytics/studies/<int:target_id>/",
        AuthMiddlewareStack(StudyOverviewConsumer.as_asgi()),
    ),
]
