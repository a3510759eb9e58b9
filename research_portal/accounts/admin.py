from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect

from research_portal.accounts.middleware import accepts
from research_portal.accounts.models import Invitation, Membership, Organization


class AutocompleteOfIds(AutocompleteSelect):
    """Django's autocomplete widget looks the submitted value up when it redraws a form with errors: a value
    that cannot be an id (text, NUL) made that query fail, a 500 instead of the field's error. Only values
    the target field accepts are looked up; the field's own validation reports the rest."""

    def optgroups(self, name, value, attr=None):
        remote = self.field.remote_field
        target = remote.model._meta.get_field(remote.field_name)
        return super().optgroups(name, [item for item in value if accepts(target, item)], attr)


class AutocompleteOfIdsMixin:
    """Autocomplete fields (autocomplete_fields) with AutocompleteOfIds."""

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name in self.get_autocomplete_fields(request):
            kwargs.setdefault(
                "widget", AutocompleteOfIds(db_field, self.admin_site, using=kwargs.get("using"))
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class MembershipInline(AutocompleteOfIdsMixin, admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    """Superusers create organisations and their first admin here; org admins invite the rest."""

    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(AutocompleteOfIdsMixin, admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__username", "user__email", "organization__name"]
    autocomplete_fields = ["user"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "created_at", "expires_at", "accepted_at"]
    list_filter = ["organization", "role"]
    readonly_fields = ["token_hash", "invited_by", "accepted_at", "accepted_by", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False  # invitations carry a link that is shown once, on the team page
