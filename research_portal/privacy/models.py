from django.conf import settings
from django.db import models

# Foreign keys by name ("accounts.Organization"): the audit log is the lowest layer, every app records in it.


class AuditLog(models.Model):
    """Who exported, deleted or changed what, and when. Rows outlive what they describe: names are copied,
    and the foreign keys are set to NULL when the user, organisation or study goes."""

    class Action(models.TextChoices):
        EXPORT = "export", "Exported data"
        DELETE_PARTICIPANT = "delete_participant", "Deleted a participant's data"
        DELETE_STUDY = "delete_study", "Deleted a study and all its data"
        RETENTION_PURGE = "retention_purge", "Deleted raw data past the retention period"
        STUDY_CREATED = "study_created", "Created a study"
        STUDY_CHANGED = "study_changed", "Changed a study"
        STUDY_STATUS = "study_status", "Changed a study's status"
        AD_ADDED = "ad_added", "Uploaded an ad"
        AD_REMOVED = "ad_removed", "Removed an ad"
        MEMBER_INVITED = "member_invited", "Invited a user"
        MEMBER_JOINED = "member_joined", "Accepted an invitation"
        MEMBER_REMOVED = "member_removed", "Removed a member"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # "system" for the retention task.
    actor_name = models.CharField(max_length=150)
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_entries",
    )
    study = models.ForeignKey(
        "studies.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    study_name = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=24, choices=Action.choices)
    # What exactly, e.g. {"export": "frames", "ad": 7} or {"sessions": 3, "frame_results": 1200}.
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.study_name}"
