from channels.auth import AuthMiddlewareStack
from django.urls import path

from research_portal.analytics.consumers import LiveDashboardConsumer

# The analyst's login session identifies them on the socket (AuthMiddlewareStack reads the session cookie).
websocket_urlpatterns = [
    path("ws/analytics/ads/<int:target_id>/", AuthMiddlewareStack(LiveDashboardConsumer.as_asgi(kind="ad"))),
    path(
        "ws/analytics/studies/<int:target_id>/",
        AuthMiddlewareStack(LiveDashboardConsumer.as_asgi(kind="study")),
    ),
]


def live_socket_path(kind: str, target_id: int) -> str:
    return f"/ws/analytics/{'ads' if kind == 'ad' else 'studies'}/{target_id}/"
