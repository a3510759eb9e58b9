from django.contrib import admin

from research_portal.capture.models import ParticipantSession, SessionEvent


class SessionEventInline(admin.TabularInline):
    model = SessionEvent
    extra = 0
    can_delete = False
    readonly_fields = ["name", "ad", "media_time_ms", "detail", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ParticipantSession)
class ParticipantSessionAdmin(admin.ModelAdmin):
    """Read-only: sessions are created by participants and changed only by the capture flow."""

    list_display = ["external_participant_id", "study", "country", "device_type", "state", "created_at"]
    list_filter = ["state", "study", "country", "device_type"]
    search_fields = ["external_participant_id"]
    readonly_fields = [field.name for field in ParticipantSession._meta.fields if field.name != "token"]
    exclude = ["token"]  # the participant's credential; never shown
    inlines = [SessionEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
