"""Study set-up pages for organisation admins. Thin: permissions (accounts.permissions), forms, services."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from research_portal.accounts.permissions import organizations_managed_by
from research_portal.capture.erasure import do_delete_participant, do_delete_study
from research_portal.capture.models import REFUSED_AT_ENTRY, ParticipantSession
from research_portal.capture.participation import do_start_preview
from research_portal.media import video_response
from research_portal.privacy.models import AuditLog
from research_portal.studies.forms import (
    AdUploadForm,
    DeleteParticipantForm,
    DeleteStudyForm,
    PreviewForm,
    StudyForm,
    locked_settings,
    settings_editable_after_launch,
)
from research_portal.studies.models import Study
from research_portal.studies.permissions import studies_managed_by, studies_visible_to, study_for_manager
from research_portal.studies.services import (
    ChangeRefused,
    check_launch_ready,
    check_study_change_allowed,
    do_add_ad,
    do_change_status,
    do_move_ad,
    do_remove_ad,
    do_save_study,
    has_started,
    participant_links,
)

# Slack for the multipart envelope around the video itself.
UPLOAD_OVERHEAD_BYTES = 1024 * 1024


@require_GET
@login_required
def study_list(request: HttpRequest) -> HttpResponse:
    studies = studies_visible_to(request.user).select_related("organization").prefetch_related("ads")
    managed = set(studies_managed_by(request.user).values_list("pk", flat=True))
    rows = [(study, study.pk in managed) for study in studies]
    return render(
        request,
        "studies/study_list.html",
        {"rows": rows, "can_create": organizations_managed_by(request.user).exists(), "section": "studies"},
    )


class OrganizationChoiceForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=None, empty_label=None)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations_managed_by(user)


@require_http_methods(["GET", "POST"])
@login_required
def study_create(request: HttpRequest) -> HttpResponse:
    if not organizations_managed_by(request.user).exists():
        raise Http404("You are not an admin of any organisation.")
    organizations = organizations_managed_by(request.user)
    owner_data = None
    if request.method == "POST":
        owner_data = request.POST.copy()
        if organizations.count() == 1:
            owner_data["organization"] = str(organizations.get().pk)
    owner = OrganizationChoiceForm(owner_data, user=request.user)
    # New studies refuse links without a panel id unless the admin unticks it (the model's default, off, is
    # what studies made before the option keep).
    form = StudyForm(request.POST or None, instance=Study(), initial={"require_participant_id": True})
    if request.method == "POST" and owner.is_valid() and form.is_valid():
        study = form.instance
        study.organization = owner.cleaned_data["organization"]
        try:
            do_save_study(study, form.quotas(), request.user, [])
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, "Study created. Upload its ads, then preview and launch it.")
            return redirect("studies:setup", study.pk)
    return render(
        request,
        "studies/study_form.html",
        {"form": form, "owner": owner, "choose_owner": organizations.count() > 1, "section": "studies"},
        status=400 if request.method == "POST" else 200,
    )


def setup_context(request: HttpRequest, study: Study, **extra) -> dict:
    sessions = ParticipantSession.objects.filter(study=study)
    context = {
        "study": study,
        "ads": list(study.ads.order_by("position", "id")),
        "quotas": list(study.quotas.all()),
        "links": participant_links(study, request.build_absolute_uri("/")),
        "sessions_without_panel_id": sessions.filter(is_preview=False, external_participant_id="").count(),
        "started": has_started(study),
        "ads_locked": ads_locked_reason(study),
        "counts": {
            "sessions": sessions.filter(is_preview=False).exclude(REFUSED_AT_ENTRY).count(),
            "completed": sessions.filter(is_preview=False, state=ParticipantSession.State.COMPLETED).count(),
            "previews": sessions.filter(is_preview=True).count(),
        },
        "ad_form": AdUploadForm(),
        "preview_form": PreviewForm(),
        "delete_participant_form": DeleteParticipantForm(),
        "delete_study_form": DeleteStudyForm(study=study),
        "audit": AuditLog.objects.filter(study=study)[:15],
        "max_upload_mb": settings.AD_MAX_UPLOAD_BYTES // (1024 * 1024),
        "section": "studies",
    }
    context.update(extra)
    return context


def ads_locked_reason(study: Study) -> str:
    try:
        check_study_change_allowed(study, ads=True)
    except ChangeRefused as refused:
        return str(refused)
    return ""


@require_http_methods(["GET", "POST"])
@login_required
def study_setup(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    form = StudyForm(request.POST or None, instance=study)
    if request.method == "POST":
        if form.is_valid():
            changed = form.changed_model_fields()
            try:
                do_save_study(form.instance, form.quotas(), request.user, changed)
            except (ChangeRefused, ValidationError) as refused:
                form.add_error(None, str(refused) if isinstance(refused, ChangeRefused) else refused)
            else:
                messages.success(request, "Saved." if changed else "Nothing changed.")
                return redirect("studies:setup", study.pk)
        study = Study.objects.get(pk=study.pk)  # the page shows what is saved, the form what was typed
        return render(request, "studies/setup.html", setup_context(request, study, form=form), status=400)
    return render(request, "studies/setup.html", setup_context(request, study, form=form))


@require_POST
@login_required
def ad_upload(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > settings.AD_MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD_BYTES:
        # Refused from the header, before the body is read.
        return HttpResponse(
            f"The upload is larger than the {settings.AD_MAX_UPLOAD_BYTES // (1024 * 1024)} MB limit.",
            status=413,
            content_type="text/plain; charset=utf-8",
        )
    ad_form = AdUploadForm(request.POST, request.FILES)
    if getattr(request, "upload_too_large", False):
        ad_form.is_valid()
        limit_mb = settings.AD_MAX_UPLOAD_BYTES // (1024 * 1024)
        ad_form.errors["video"] = ad_form.error_class([f"The video is larger than the {limit_mb} MB limit."])
    elif ad_form.is_valid():
        try:
            do_add_ad(
                study,
                ad_form.cleaned_data["title"],
                ad_form.cleaned_data["video"],
                ad_form.duration_ms,
                request.user,
                category=ad_form.cleaned_data["category"],
            )
        except ChangeRefused as refused:
            ad_form.add_error(None, str(refused))
        else:
            messages.success(request, f"Ad “{ad_form.cleaned_data['title']}” uploaded.")
            return redirect(reverse("studies:setup", args=[study.pk]) + "#ads")
    context = setup_context(request, study, form=StudyForm(instance=study), ad_form=ad_form)
    return render(request, "studies/setup.html", context, status=400)


def refused_page(request: HttpRequest, study: Study, refused: ChangeRefused) -> HttpResponse:
    """The set-up page with the reason a change was refused (409: the study's state does not allow it)."""
    messages.error(request, str(refused))
    context = setup_context(request, study, form=StudyForm(instance=study))
    return render(request, "studies/setup.html", context, status=409)


@require_POST
@login_required
def ad_move(request: HttpRequest, study_id: int, ad_id: int, direction: str) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    ad = get_object_or_404(study.ads, pk=ad_id)
    if direction not in ("up", "down"):
        raise Http404
    try:
        do_move_ad(study, ad, -1 if direction == "up" else 1)
    except ChangeRefused as refused:
        return refused_page(request, study, refused)
    return redirect(reverse("studies:setup", args=[study.pk]) + "#ads")


@require_POST
@login_required
def ad_remove(request: HttpRequest, study_id: int, ad_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    ad = get_object_or_404(study.ads, pk=ad_id)
    try:
        do_remove_ad(study, ad, request.user)
    except ChangeRefused as refused:
        return refused_page(request, study, refused)
    messages.success(request, f"Ad “{ad.title}” removed.")
    return redirect(reverse("studies:setup", args=[study.pk]) + "#ads")


@require_GET
@login_required
def ad_video(request: HttpRequest, study_id: int, ad_id: int) -> HttpResponse:
    """The ad for its study's admins to check on the set-up page (never from a public media path)."""
    study = study_for_manager(request.user, study_id)
    return video_response(request, get_object_or_404(study.ads, pk=ad_id).video)


@require_POST
@login_required
def change_status(request: HttpRequest, study_id: int, action: str) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    if action == "launch":
        # Launching locks the ads and the capture settings for good: only the confirmation page launches.
        return redirect("studies:launch", study.pk)
    try:
        study = do_change_status(study, action, request.user)
    except ChangeRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"The study is now {study.get_status_display().lower()}.")
    return redirect("studies:setup", study.pk)


def launch_context(study: Study, **extra) -> dict:
    form = StudyForm(instance=study)
    try:
        check_launch_ready(study)
        not_ready = ""
    except ChangeRefused as refused:
        not_ready = str(refused)
    return {
        "study": study,
        "ads": list(study.ads.order_by("position", "id")),
        "quotas": list(study.quotas.all()),
        "locked_settings": locked_settings(form),
        "editable_settings": settings_editable_after_launch(form),
        "not_ready": not_ready,
        "section": "studies",
        **extra,
    }


@require_http_methods(["GET", "POST"])
@login_required
def launch(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: what launching will lock, to confirm. POST: the confirmation; launches the study (a draft whose
    ads are ready), else 409 with the reason."""
    study = study_for_manager(request.user, study_id)
    if request.method == "POST":
        try:
            study = do_change_status(study, "launch", request.user)
        except ChangeRefused as refused:
            study = Study.objects.get(pk=study.pk)
            context = launch_context(study, refused=str(refused))
            return render(request, "studies/launch.html", context, status=409)
        messages.success(request, "The study is now live; its ads and capture settings are locked.")
        return redirect("studies:setup", study.pk)
    return render(request, "studies/launch.html", launch_context(study))


@require_POST
@login_required
def preview(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    form = PreviewForm(request.POST)
    language = form.cleaned_data["language"] if form.is_valid() else "en"
    try:
        session = do_start_preview(study, language)
    except ChangeRefused as refused:
        messages.error(request, str(refused))
        return redirect("studies:setup", study.pk)
    return redirect("participant-consent", session.token)


@require_POST
@login_required
def delete_participant(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    form = DeleteParticipantForm(request.POST)
    if not form.is_valid():
        context = setup_context(request, study, form=StudyForm(instance=study), delete_participant_form=form)
        return render(request, "studies/setup.html", context, status=400)
    deleted = do_delete_participant(study, form.cleaned_data["panel_id"], request.user)
    if deleted.sessions:
        messages.success(
            request,
            f"Deleted {deleted.sessions} session(s), {deleted.frame_results} frame readings and "
            f"{deleted.events} events of that participant.",
        )
    else:
        messages.warning(request, "No session of this study has that panel id; nothing was deleted.")
    return redirect(reverse("studies:setup", args=[study.pk]) + "#data")


@require_POST
@login_required
def delete_study(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_for_manager(request.user, study_id)
    form = DeleteStudyForm(request.POST, study=study)
    if not form.is_valid():
        context = setup_context(request, study, form=StudyForm(instance=study), delete_study_form=form)
        return render(request, "studies/setup.html", context, status=400)
    name = study.name
    deleted = do_delete_study(study, request.user)
    messages.success(request, f"Deleted “{name}” with {deleted.sessions} session(s) and all their data.")
    return redirect("studies:list")
