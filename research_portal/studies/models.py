import secrets

from django.core.exceptions import ValidationError
from django.core.validators import FileExtensionValidator
from django.db import models

from research_portal.accounts.models import Organization


def validate_country_codes(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(code, str) and len(code) == 2 and code.isascii() and code.isupper() for code in value
    ):
        raise ValidationError('Give a list of two-letter country codes, e.g. ["DE", "US"], or [] for any.')


def new_public_id() -> str:
    # Participant links carry this id; unguessable so a study cannot be found by enumeration.
    return secrets.token_urlsafe(12)


class Study(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        LIVE = "live", "Live"
        PAUSED = "paused", "Paused"
        CLOSED = "closed", "Closed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    # ISO 3166-1 alpha-2 codes; empty means any country is accepted.
    allowed_countries = models.JSONField(default=list, blank=True, validators=[validate_country_codes])
    public_id = models.CharField(max_length=32, unique=True, default=new_public_id, editable=False)
    consent_text = models.TextField(
        default=(
            "We will ask for your webcam while you watch a short video. Your webcam frames are analysed "
            "by our software to read facial expressions and are then discarded: no picture or video of "
            "you is stored. We store only the readings (for example, how much you smiled each second), "
            "linked to your panel participant id."
        )
    )
    capture_fps = models.PositiveSmallIntegerField(default=5)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_accepting_participants(self) -> bool:
        return self.status == self.Status.LIVE


class Ad(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="ads")
    title = models.CharField(max_length=200)
    video = models.FileField(
        upload_to="ads/",
        validators=[FileExtensionValidator(["webm", "mp4", "ogv", "mov", "m4v"])],
    )
    duration_ms = models.PositiveIntegerField(editable=False, default=0)
    position = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "position", "id"]

    def __str__(self) -> str:
        return self.title
