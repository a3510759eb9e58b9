from django.urls import path

from research_portal.capture.consumers import CaptureConsumer

websocket_urlpatterns = [
    path("ws/capture/<str:token>/", CaptureConsumer.as_asgi(), name="capture-socket"),
]


def capture_socket_path(token: str) -> str:
    return f"/ws/capture/{token}/"
