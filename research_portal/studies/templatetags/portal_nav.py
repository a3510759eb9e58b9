"""The portal's top navigation (set-up, dashboards, team, admin): only the links the signed-in user may use,
decided by accounts/permissions.py like the pages themselves."""

from __future__ import annotations

from django import template
from django.urls import reverse

from research_portal.accounts.permissions import is_signed_in, organizations_of

register = template.Library()


def nav_links(user) -> list[tuple[str, str, str]]:
    """(section, label, URL) of each page the user may open: the study list, the dashboards and the team page
    for members of an organisation (and superusers); Django admin for staff."""
    if not is_signed_in(user):
        return []
    links = []
    if user.is_superuser or organizations_of(user).exists():
        links += [
            ("studies", "Studies", reverse("studies:list")),
            ("analytics", "Dashboards", reverse("analytics:studies")),
            ("team", "Team", reverse("accounts:team")),
        ]
    if user.is_staff:
        links.append(("admin", "Admin", reverse("admin:index")))
    return links


@register.inclusion_tag("studies/_nav.html", takes_context=True)
def portal_nav(context: template.Context, section: str = "") -> dict:
    request = context.get("request")
    return {"links": nav_links(getattr(request, "user", None)), "section": section}
