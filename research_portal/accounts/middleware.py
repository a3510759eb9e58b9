from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from research_portal.accounts.ratelimit import LoginThrottled


class AdminForStaffOnlyMiddleware:
    """Django admin is for the installation's staff. A signed-in organisation user gets 404 there (not the
    admin's login form, and no hint of what the admin holds); their pages are /studies/ and /analytics/."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            request.path.startswith("/admin/")
            and user is not None
            and user.is_authenticated
            and not user.is_staff
            and not request.path.startswith("/admin/logout/")
        ):
            raise Http404("Not found.")
        return self.get_response(request)


def too_many_attempts(request: HttpRequest, retry_after_s: int) -> HttpResponse:
    response = render(
        request,
        "accounts/message.html",
        {"title": "Too many attempts", "detail": "Please wait a few minutes before trying again."},
        status=429,
    )
    response["Retry-After"] = str(retry_after_s)
    return response


class LoginThrottleMiddleware:
    """The one answer to too many sign-in attempts, whichever view was signing someone in (the limiter raises
    LoginThrottled from the authentication backend or the invitation view): 429 with Retry-After."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, LoginThrottled):
            return too_many_attempts(request, exception.retry_after_s)
        return None
