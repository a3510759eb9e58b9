from django.contrib import admin

from research_portal.analytics.models import OrganizationAnalyst


@admin.register(OrganizationAnalyst)
class OrganizationAnalystAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "created_at"]
    list_filter = ["organization"]
    search_fields = ["user__username", "organization__name"]
    autocomplete_fields = ["organization"]
