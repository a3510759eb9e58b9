"""Who may see and change what, part one: who belongs to which organisation, in which role. Access to
studies and ads is decided on top of this in studies/permissions.py; views, exports, sockets and media call
those two modules and nothing else.

- Superusers (staff of the installation) see and manage everything; they manage organisations in admin.
- An organisation's admins see and manage its studies and invite users.
- An organisation's analysts see its studies' dashboards and exports.
- Anyone else gets Http404 for a study of another organisation: its existence is not revealed.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from research_portal.accounts.models import Membership, Organization, Role


def is_signed_in(user) -> bool:
    return user is not None and user.is_authenticated and user.is_active


def organizations_of(user, role: str | None = None) -> QuerySet[Organization]:
    if not is_signed_in(user):
        return Organization.objects.none()
    if user.is_superuser:
        return Organization.objects.all()
    memberships = Membership.objects.filter(user=user)
    if role is not None:
        memberships = memberships.filter(role=role)
    return Organization.objects.filter(pk__in=memberships.values("organization_id"))


def organizations_managed_by(user) -> QuerySet[Organization]:
    return organizations_of(user, Role.ADMIN)


def check_can_manage_organization(user, organization: Organization) -> None:
    if not organizations_of(user).filter(pk=organization.pk).exists():
        raise Http404("No such organisation.")
    if not organizations_managed_by(user).filter(pk=organization.pk).exists():
        raise PermissionDenied("Only an admin of this organisation can manage its members.")
