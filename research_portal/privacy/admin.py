from django.contrib import admin

from research_portal.privacy.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """Append-only: nobody edits or deletes the record of what was exported or deleted."""

    list_display = ["created_at", "actor_name", "action", "organization", "study_name"]
    list_filter = ["action", "organization"]
    search_fields = ["actor_name", "study_name"]
    readonly_fields = [field.name for field in AuditLog._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
