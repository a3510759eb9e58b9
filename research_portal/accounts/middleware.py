from django.http import Http404, HttpRequest, HttpResponse


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
