from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput

from research_portal.studies.models import Ad, ConsentVersion, CountryQuota, Study
from research_portal.studies.services import (
    ChangeRefused,
    check_ad_video,
    check_study_change_allowed,
    has_started,
    participant_link_template,
)


class JSONTextField(forms.JSONField):
    """Django's JSON form field, with text nested past the JSON parser's recursion limit an error of the field
    (Django's catches only JSONDecodeError: a RecursionError was a 500), when cleaned and when redrawn."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except RecursionError as error:
            raise ValidationError("Enter valid JSON (this nests too deep).", code="invalid") from error

    def bound_data(self, data, initial):
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)


class AdForm(forms.ModelForm):
    class Meta:
        model = Ad
        fields = ["study", "title", "category", "video", "position"]

    def clean_video(self):
        video = self.cleaned_data["video"]
        # Only a new upload needs probing; an unchanged ad keeps its measured duration.
        if video and "video" in self.changed_data:
            self.instance.duration_ms = check_ad_video(video, settings.AD_MAX_UPLOAD_BYTES)
        return video

    def clean(self):
        """A launched study's ads are locked here as on the set-up page: no ad added, replaced, moved or
        reordered (a title or a category may still be corrected)."""
        data = super().clean()
        changes_playlist = not self.instance.pk or bool(set(self.changed_data) - {"title", "category"})
        if changes_playlist:
            # The study it goes to and the one it leaves (a study being created in the same form has no pk).
            chosen = data.get("study")
            study_ids = {getattr(chosen, "pk", None), self.instance.study_id} - {None}
            for study in Study.objects.filter(pk__in=study_ids):
                try:
                    check_study_change_allowed(study, ads=True)
                except ChangeRefused as refused:
                    raise ValidationError(str(refused)) from refused
        return data


class StudyAdminForm(forms.ModelForm):
    """A launched study's locked settings are refused here as on the set-up page
    (services.check_study_change_allowed); the status itself is staff's to change."""

    def clean(self):
        data = super().clean()
        if self.instance.pk:
            before = Study.objects.get(pk=self.instance.pk)
            for name in self.changed_data:
                if name == "status":
                    continue
                try:
                    check_study_change_allowed(before, [name])
                except ChangeRefused as refused:
                    self.add_error(name if name in self.fields else None, str(refused))
        return data


class AdInline(admin.TabularInline):
    model = Ad
    form = AdForm
    extra = 1
    readonly_fields = ["duration_ms"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # obj is the study: a launched one keeps its ads (the set-up page's rule).
        if obj is not None and has_started(obj):
            return False
        return super().has_delete_permission(request, obj)


class CountryQuotaInline(admin.TabularInline):
    model = CountryQuota
    extra = 1


class ConsentVersionInline(admin.TabularInline):
    """The texts participants agreed to; a new version appears when the consent text changes."""

    model = ConsentVersion
    extra = 0
    can_delete = False
    readonly_fields = ["version", "language", "text", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    form = StudyAdminForm
    list_display = ["name", "organization", "status", "created_at"]
    list_filter = ["status", "organization"]
    search_fields = ["name"]
    readonly_fields = ["public_id", "participant_link"]
    inlines = [AdInline, CountryQuotaInline, ConsentVersionInline]
    # Redirect URLs typed without a scheme are https (Django 6's default).
    formfield_overrides = {
        models.URLField: {"assume_scheme": "https"},
        models.JSONField: {"form_class": JSONTextField},
    }
    fieldsets = [
        (None, {"fields": ["organization", "name", "status", "public_id", "participant_link"]}),
        (
            "Participants",
            {
                "fields": [
                    "allowed_countries",
                    "participant_id_param",
                    "country_param",
                    "require_participant_id",
                    "consent_text",
                    "consent_translations",
                ]
            },
        ),
        (
            "Panel link signing and quotas (docs/architecture.md, a participant's way through a study)",
            {
                "fields": [
                    "link_signing_secret",
                    "link_signature_param",
                    "link_timestamp_param",
                    "link_max_age_minutes",
                    "quota_seat_minutes",
                ]
            },
        ),
        (
            "Panel redirects ({pid} is replaced by the participant id)",
            {
                "fields": [
                    "redirect_complete_url",
                    "redirect_failed_url",
                    "redirect_declined_url",
                    "redirect_over_quota_url",
                ]
            },
        ),
        (
            "Capture and quality",
            {
                "fields": [
                    "capture_fps",
                    "store_frames",
                    "ad_order",
                    "baseline_seconds",
                    "max_check_attempts",
                    "check_attempt_seconds",
                    "min_usable_frame_ratio",
                    "min_face_quality",
                ]
            },
        ),
    ]

    @admin.display(description="Participant link")
    def participant_link(self, study: Study) -> str:
        return participant_link_template(study, settings.SITE_URL, "COUNTRY")


@admin.register(Ad)
class AdAdmin(admin.ModelAdmin):
    form = AdForm
    list_display = ["title", "study", "category", "duration_ms", "position"]
    readonly_fields = ["duration_ms"]
