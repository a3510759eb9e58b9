from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
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


class AdminParametersMiddleware:
    """Django admin turns request parameters into database queries without checking all of them: text with
    NUL in a query parameter (list filters, the autocomplete term), which Postgres refuses in a query, and an
    action's selected objects (`_selected_action`) that are not ids of the model, which the lookup refuses.
    Both were 500s (docs/security.md, L11); such a request gets 400 with the reason. The portal's own pages
    check their parameters themselves (analytics.services, capture.participation)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> HttpResponse | None:
        if not request.path.startswith("/admin/"):
            return None
        if has_nul(request.GET):
            return bad_admin_request(request, "Query parameters cannot contain NUL characters.")
        model_admin = getattr(view_func, "model_admin", None)  # set by ModelAdmin.get_urls on its views
        if model_admin is not None and request.method == "POST":
            pk = model_admin.model._meta.pk
            if not all(accepts(pk, value) for value in request.POST.getlist(ACTION_CHECKBOX_NAME)):
                return bad_admin_request(request, "The selected objects are not valid.")
        return None


def has_nul(query) -> bool:
    return any("\x00" in name or any("\x00" in value for value in values) for name, values in query.lists())


def accepts(field, value: str) -> bool:
    """Whether the model field takes `value` (as its form or lookup would convert it)."""
    try:
        field.to_python(value)
    except ValidationError:
        return False
    return True


def bad_admin_request(request: HttpRequest, detail: str) -> HttpResponse:
    context = {"title": "Bad request", "detail": detail}
    return render(request, "accounts/message.html", context, status=400)


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
