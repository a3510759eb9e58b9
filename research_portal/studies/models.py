import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import FileExtensionValidator
from django.db import models

from research_portal.accounts.models import Organization
from research_portal.countries import UnknownCountry, check_country_code


def validate_country_codes(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(code, str) and len(code) == 2 and code.isascii() and code.isupper() for code in value
    ):
        raise ValidationError('Give a list of two-letter country codes, e.g. ["DE", "US"], or [] for any.')
    errors = []
    for code in value:
        try:
            check_country_code(code)
        except UnknownCountry as unknown:
            errors.append(str(unknown))
    if errors:
        raise ValidationError(errors)


def validate_consent_translations(value: object) -> None:
    languages = {code for code, _name in settings.LANGUAGES}
    if not isinstance(value, dict) or not all(
        key in languages and isinstance(text, str) and text.strip() for key, text in value.items()
    ):
        raise ValidationError(
            f"Give a JSON object of language code to consent text, codes among {sorted(languages)}, "
            'e.g. {"de": "Wir bitten Sie ..."}.'
        )
    if any("\x00" in text for text in value.values()):
        # No database text holds NUL (Postgres refuses it in JSON too): it was a 500 from the admin's form.
        raise ValidationError("Consent texts cannot contain NUL characters.")


# A panel's link-signing secret: printable ASCII without spaces, so every panel's HMAC library reads the
# same key bytes; 32+ characters (e.g. 64 hex digits or `secrets.token_urlsafe(32)`).
LINK_SECRET = re.compile(r"^[\x21-\x7e]{32,128}$")
# Query parameter names the study link may use (the participant id, country, signature and time ones).
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
PARAM_NAME_MESSAGE = "Use letters, digits and _ only (up to 32), starting with a letter or _."


def validate_link_secret(value: str) -> None:
    if value and not LINK_SECRET.match(value):
        raise ValidationError(
            "Use 32 to 128 printable ASCII characters without spaces, e.g. 64 hex digits from the panel."
        )


def validate_param_name(value: str) -> None:
    if not PARAM_NAME.match(value):
        raise ValidationError(PARAM_NAME_MESSAGE)


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
    # The agency's client the study is run for (shown on the set-up pages and in exports' context).
    client = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    # ISO 3166-1 alpha-2 codes; empty means any country is accepted.
    allowed_countries = models.JSONField(default=list, blank=True, validators=[validate_country_codes])
    public_id = models.CharField(max_length=32, unique=True, default=new_public_id, editable=False)
    # Blank: the portal's standard consent text, translated into each participant's language.
    consent_text = models.TextField(blank=True)
    # Optional per-language texts, e.g. {"de": "...", "ja": "..."}; consent_text is the fallback.
    consent_translations = models.JSONField(
        default=dict, blank=True, validators=[validate_consent_translations]
    )
    capture_fps = models.PositiveSmallIntegerField(default=5)
    # Opt-in only: keep the JPEG frames themselves (the default analyses and discards them).
    store_frames = models.BooleanField(default=False)
    # Stored frames (only with store_frames) are deleted this many days after their session started.
    frame_retention_days = models.PositiveSmallIntegerField(default=30)
    # Raw per-frame readings (FrameResult) are deleted this many days after their session started; the
    # anonymous per-second aggregates the dashboards read are kept (privacy/retention.py).
    retention_days = models.PositiveSmallIntegerField(default=365)

    # How the panel passes its participant id and country in the study link, e.g. ?pid=...&c=DE.
    participant_id_param = models.CharField(max_length=32, default="pid")
    country_param = models.CharField(max_length=32, default="c")
    # On: a link without a panel participant id is refused at entry (400), so every session has one and every
    # redirect's {pid} is filled. Off (what studies made before this option do): such a link still starts a
    # session, without an id, which cannot be resumed and whose redirects carry an empty {pid}.
    require_participant_id = models.BooleanField(default=False)
    # Panel link signing (docs/architecture.md, "A participant's way through a study"): with a secret, every
    # link must carry HMAC-SHA256(secret, canonical query) in `link_signature_param`; blank: links unsigned.
    link_signing_secret = models.CharField(max_length=128, blank=True, validators=[validate_link_secret])
    link_signature_param = models.CharField(max_length=32, default="sig", validators=[validate_param_name])
    link_timestamp_param = models.CharField(max_length=32, default="ts", validators=[validate_param_name])
    # > 0: signed links must also carry a signed Unix time (seconds) no older than this; 0: no time needed.
    link_max_age_minutes = models.PositiveIntegerField(default=0)
    # Quotas: an entry holds a seat of its country's quota this long (or until it ends); a complete beyond
    # the target is recorded as over quota. 0: no seats held, the first completes win, later ones are over
    # quota.
    quota_seat_minutes = models.PositiveSmallIntegerField(default=30)
    # Where participants go back to; "{pid}" is replaced by their (URL-encoded) panel participant id.
    redirect_complete_url = models.URLField(max_length=500, blank=True)
    redirect_failed_url = models.URLField(max_length=500, blank=True)
    redirect_declined_url = models.URLField(max_length=500, blank=True)
    redirect_over_quota_url = models.URLField(max_length=500, blank=True)

    class AdOrder(models.TextChoices):
        FIXED = "fixed", "Fixed (by position)"
        RANDOM = "random", "Randomised per participant"

    ad_order = models.CharField(max_length=8, choices=AdOrder.choices, default=AdOrder.FIXED)
    # A calm screen before the first ad; each participant's resting expression for baseline correction.
    baseline_seconds = models.PositiveSmallIntegerField(default=5)
    # Device and face check: tries before the participant is sent back with the Failed redirect.
    max_check_attempts = models.PositiveSmallIntegerField(default=3)
    check_attempt_seconds = models.PositiveSmallIntegerField(default=20)
    # A validated complete needs, for every ad, this share of the expected frames with a usable face...
    min_usable_frame_ratio = models.FloatField(default=0.6)
    # ...where usable means a face was found with at least this quality score (0..1).
    min_face_quality = models.FloatField(default=0.3)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The study link's parameter names must be distinct, or one value would be read as two things."""
        labels = {
            "participant_id_param": "participant id",
            "country_param": "country",
            "link_signature_param": "signature",
            "link_timestamp_param": "time",
        }
        fields = list(labels) if self.link_signing_secret else list(labels)[:2]
        errors: dict[str, str] = {}
        first_with: dict[str, str] = {}
        for field in fields:
            value = getattr(self, field)
            if value in first_with:
                errors[field] = (
                    f"The {labels[field]} parameter must differ from the {labels[first_with[value]]} one."
                )
            first_with.setdefault(value, field)
        if errors:
            raise ValidationError(errors)

    @property
    def is_accepting_participants(self) -> bool:
        return self.status == self.Status.LIVE

    @property
    def signs_links(self) -> bool:
        return bool(self.link_signing_secret)


class Ad(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="ads")
    title = models.CharField(max_length=200)
    video = models.FileField(
        upload_to="ads/",
        validators=[FileExtensionValidator(["webm", "mp4", "ogv", "mov", "m4v"])],
    )
    duration_ms = models.PositiveIntegerField(editable=False, default=0)
    position = models.PositiveSmallIntegerField(default=0)
    # Free text the admin sets at upload (e.g. "snacks", "automotive"): the analytics norms can be limited to
    # the organisation's ads of one category (analytics/norms.py).
    category = models.CharField(max_length=60, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "position", "id"]

    def __str__(self) -> str:
        return self.title

    @property
    def duration_s(self) -> float:
        """The length pages show (in seconds; stored in ms, as the player and the frames count time)."""
        return self.duration_ms / 1000


class CountryQuota(models.Model):
    """How many validated completes a study needs from one country; entry closes when it is reached."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="quotas")
    country = models.CharField(max_length=2)
    target = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "country"], name="countryquota_unique_country")
        ]
        ordering = ["study", "country"]

    def __str__(self) -> str:
        return f"{self.country}: {self.target}"

    def clean(self) -> None:
        self.country = self.country.strip().upper()
        try:
            check_country_code(self.country)
        except UnknownCountry as unknown:
            raise ValidationError({"country": str(unknown)}) from unknown


class ConsentVersion(models.Model):
    """The exact consent text a participant agreed to; a new version whenever the study's text changes."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="consent_versions")
    version = models.PositiveIntegerField()
    language = models.CharField(max_length=8, default="en")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "version"], name="consentversion_unique_version")
        ]
        ordering = ["study", "-version"]

    def __str__(self) -> str:
        return f"{self.study} consent v{self.version} ({self.language})"
