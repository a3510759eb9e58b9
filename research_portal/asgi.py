import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from research_portal.analytics.routing import websocket_urlpatterns as analytics_websockets  # noqa: E402
from research_portal.capture.routing import websocket_urlpatterns  # noqa: E402
from research_portal.ops.body_limits import BodyLimitMiddleware, install_daphne_body_limits  # noqa: E402
from research_portal.ops.sockets import unknown_socket_route  # noqa: E402

# Request bodies are limited per route before they are read: by the middleware for any ASGI server, and
# inside daphne, which otherwise buffers a whole body before calling the application (ops/body_limits.py).
install_daphne_body_limits()

application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            # Last, for any other path: a 4004 close (ops/sockets.py), never an exception in the router.
            URLRouter([*websocket_urlpatterns, *analytics_websockets, unknown_socket_route])
        ),
    }
)
