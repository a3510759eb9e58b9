from django import forms
from django.conf import settings
from django.contrib import admin

from research_portal.studies.models import Ad, Study
from research_portal.studies.services import check_ad_video


class AdForm(forms.ModelForm):
    class Meta:
        model = Ad
        fields = ["study", "title", "video", "position"]

    def clean_video(self):
        video = self.cleaned_data["video"]
        # Only a new upload needs probing; an unchanged ad keeps its measured duration.
        if video and "video" in self.changed_data:
            self.instance.duration_ms = check_ad_video(video, settings.AD_MAX_UPLOAD_BYTES)
        return video


class AdInline(admin.TabularInline):
    model = Ad
    form = AdForm
    extra = 1
    readonly_fields = ["duration_ms"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "status", "created_at"]
    list_filter = ["status", "organization"]
    search_fields = ["name"]
    readonly_fields = ["public_id", "participant_link"]
    inlines = [AdInline]

    @admin.display(description="Participant link")
    def participant_link(self, study: Study) -> str:
        return f"{settings.SITE_URL}/s/{study.public_id}/?pid=PARTICIPANT_ID&c=COUNTRY"


@admin.register(Ad)
class AdAdmin(admin.ModelAdmin):
    form = AdForm
    list_display = ["title", "study", "duration_ms", "position"]
    readonly_fields = ["duration_ms"]
