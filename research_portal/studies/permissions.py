"""Who may see and change what, part two: studies and ads, decided from the organisations a user belongs to
(accounts/permissions.py). Another organisation's study or ad gets Http404: its existence is not revealed.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from research_portal.accounts.permissions import is_signed_in, organizations_managed_by, organizations_of
from research_portal.studies.models import Ad, Study


def studies_visible_to(user) -> QuerySet[Study]:
    """Studies whose dashboards, exports and live feed the user may read (admins and analysts)."""
    if not is_signed_in(user):
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(organization__in=organizations_of(user))


def studies_managed_by(user) -> QuerySet[Study]:
    """Studies the user may set up, launch, preview and delete data of (organisation admins)."""
    if not is_signed_in(user):
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(organization__in=organizations_managed_by(user))


def check_can_view_study(user, study: Study) -> None:
    """Http404 unless the user may read the study (another organisation's study does not exist for them)."""
    if not studies_visible_to(user).filter(pk=study.pk).exists():
        raise Http404("No such study.")


def check_can_manage_study(user, study: Study) -> None:
    """Http404 for another organisation's study; PermissionDenied (403) for an analyst of its own."""
    check_can_view_study(user, study)
    if not studies_managed_by(user).filter(pk=study.pk).exists():
        raise PermissionDenied("Only an admin of this study's organisation can change it.")


def study_for_viewer(user, study_id: int) -> Study:
    study = studies_visible_to(user).select_related("organization").filter(pk=study_id).first()
    if study is None:
        raise Http404("No such study.")
    return study


def study_for_manager(user, study_id: int) -> Study:
    study = Study.objects.select_related("organization").filter(pk=study_id).first()
    if study is None:
        raise Http404("No such study.")
    check_can_manage_study(user, study)
    return study


def ad_for_viewer(user, ad_id: int) -> Ad:
    """The ad with its study and organisation, for a user who may read its study (dashboards, exports, the
    analyst video, the live feed call this directly); Http404 for a missing ad and for another
    organisation's alike."""
    ad = (
        Ad.objects.select_related("study", "study__organization")
        .filter(pk=ad_id, study__in=studies_visible_to(user))
        .first()
    )
    if ad is None:
        raise Http404("No such ad.")
    return ad
