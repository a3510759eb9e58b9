"""Sign-in, sign-out, the organisation's team page and invitation links."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from research_portal.accounts.backends import BACKEND_PATH
from research_portal.accounts.forms import AcceptInvitationForm, InviteForm
from research_portal.accounts.models import Membership, hash_token
from research_portal.accounts.permissions import check_can_manage_organization, organizations_of
from research_portal.accounts.ratelimit import do_start_login_attempt
from research_portal.accounts.services import (
    InvitationInvalid,
    do_accept_invitation,
    do_invite,
    do_remove_member,
    find_open_invitation,
)


class LoginView(auth_views.LoginView):
    """Django's sign-in. Failed attempts are limited by the authentication backend, on this page and on
    /admin/login/ alike (accounts.backends.ThrottledModelBackend)."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    """POST only (Django's own rule): a link cannot sign anyone out."""


@require_http_methods(["GET", "POST"])
@login_required
def team(request: HttpRequest, organization_id: int | None = None) -> HttpResponse:
    organizations = list(organizations_of(request.user))
    if organization_id is None:
        if not organizations:
            return render(
                request,
                "accounts/message.html",
                {"title": "No organisation", "detail": "You are not a member of any organisation yet."},
            )
        return redirect("accounts:team-of", organizations[0].pk)
    organization = get_object_or_404(organizations_of(request.user), pk=organization_id)
    try:
        check_can_manage_organization(request.user, organization)
        can_manage = True
    except PermissionDenied:
        can_manage = False
    form = InviteForm(request.POST or None, organization=organization)
    invite_link = ""
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied("Only an admin of this organisation can invite users.")
        if form.is_valid():
            invitation, token = do_invite(
                organization, form.cleaned_data["email"], form.cleaned_data["role"], request.user
            )
            invite_link = request.build_absolute_uri(f"/accounts/invite/{token}/")
            messages.success(request, f"Invitation for {invitation.email} created. Send them the link below.")
            form = InviteForm(organization=organization)
    context = {
        "organization": organization,
        "organizations": organizations,
        "members": organization.memberships.select_related("user").order_by("user__username"),
        "invitations": organization.invitations.filter(accepted_at__isnull=True)[:20],
        "form": form,
        "can_manage": can_manage,
        "invite_link": invite_link,
    }
    return render(request, "accounts/team.html", context, status=400 if form.errors else 200)


@require_POST
@login_required
def remove_member(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("organization", "user"),
        pk=membership_id,
        organization__in=organizations_of(request.user),
    )
    check_can_manage_organization(request.user, membership.organization)
    if membership.user_id == request.user.pk:
        messages.error(request, "You cannot remove yourself.")
    else:
        do_remove_member(membership, request.user)
        messages.success(request, f"{membership.user.get_username()} was removed.")
    return redirect("accounts:team-of", membership.organization_id)


@require_http_methods(["GET", "POST"])
def accept_invitation(request: HttpRequest, token: str) -> HttpResponse:
    # The link signs its holder in: an unknown or expired token counts as a failed sign-in (same limiter).
    attempt = do_start_login_attempt(request, "invitation:" + hash_token(token))
    try:
        invitation = find_open_invitation(token)
    except InvitationInvalid as invalid:
        return render(
            request,
            "accounts/message.html",
            {"title": "Invitation not valid", "detail": str(invalid)},
            status=404,
        )
    attempt.do_succeeded()
    form = AcceptInvitationForm(request.POST or None, email=invitation.email)
    if request.method == "POST" and form.is_valid():
        try:
            user = do_accept_invitation(token, form.cleaned_data["username"], form.cleaned_data["password1"])
        except InvitationInvalid as invalid:
            return render(
                request,
                "accounts/message.html",
                {"title": "Invitation not valid", "detail": str(invalid)},
                status=404,
            )
        login(request, user, backend=BACKEND_PATH)
        messages.success(request, f"Welcome to {invitation.organization.name}.")
        return redirect("studies:list")
    return render(
        request,
        "accounts/accept.html",
        {"invitation": invitation, "form": form},
        status=400 if form.errors else 200,
    )
