"""Set-up page forms. Every field rejects bad values with its own message; a launched study's locked fields
are refused on the field, with the reason (services.check_study_change_allowed)."""

from __future__ import annotations

import re

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.forms.utils import pretty_name

from research_portal.countries import UnknownCountry, check_country_code
from research_portal.studies.models import PARAM_NAME, PARAM_NAME_MESSAGE, Study
from research_portal.studies.services import (
    LOCKED_AFTER_LAUNCH,
    ChangeRefused,
    check_ad_video,
    check_study_change_allowed,
    has_started,
)

COUNTRY_LINE = re.compile(r"^([A-Za-z]{2})(?:\s*[:=\s]\s*(\S+))?$")
TRANSLATED_LANGUAGES = [(code, name) for code, name in settings.LANGUAGES if code != "en"]
MAX_QUOTA = 1_000_000
# Study options added after forms were first posted: a submission without them keeps the defaults.
OPTIONAL_WITH_DEFAULT = (
    "link_signature_param",
    "link_timestamp_param",
    "link_max_age_minutes",
    "quota_seat_minutes",
)


def parse_countries(text: str) -> tuple[list[str], dict[str, int]]:
    """'DE 200', 'US: 150', 'JP' (one per line or comma-separated) -> (["DE", "JP", "US"], {"DE": 200, ...}).
    Raises ValidationError naming each bad entry: not two letters, not a country (ISO 3166-1), listed twice,
    or a quota out of range."""
    countries: list[str] = []
    quotas: dict[str, int] = {}
    errors = []
    entries = [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]
    for entry in entries:
        match = COUNTRY_LINE.match(entry)
        if not match:
            errors.append(f"“{entry}” is not a two-letter country code with an optional quota, e.g. DE 200.")
            continue
        code = match[1].upper()
        try:
            check_country_code(code)
        except UnknownCountry as unknown:
            errors.append(str(unknown))
            continue
        if code in countries:
            errors.append(f"{code} is listed twice.")
            continue
        countries.append(code)
        if match[2] is not None:
            if not match[2].isdigit() or not 1 <= int(match[2]) <= MAX_QUOTA:
                errors.append(f"The quota for {code} must be a whole number from 1 to {MAX_QUOTA}.")
                continue
            quotas[code] = int(match[2])
    if errors:
        raise ValidationError(errors)
    return sorted(countries), quotas


def format_countries(study: Study) -> str:
    quotas = dict(study.quotas.values_list("country", "target")) if study.pk else {}
    return "\n".join(f"{code} {quotas[code]}" if code in quotas else code for code in study.allowed_countries)


def bounded(low: float, high: float) -> list:
    return [MinValueValidator(low), MaxValueValidator(high)]


def https_by_default(field, **kwargs):
    """Model fields to form fields; URLs typed without a scheme are https (Django 6's default)."""
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


class StudyForm(forms.ModelForm):
    countries = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "DE 200\nUS 150\nJP"}),
        help_text="One country per line (ISO code), with an optional quota of validated completes. "
        "Empty: any country, no quota.",
    )

    class Meta:
        model = Study
        formfield_callback = https_by_default
        fields = [
            "name",
            "client",
            "consent_text",
            "participant_id_param",
            "country_param",
            "require_participant_id",
            "link_signing_secret",
            "link_signature_param",
            "link_timestamp_param",
            "link_max_age_minutes",
            "quota_seat_minutes",
            "redirect_complete_url",
            "redirect_failed_url",
            "redirect_declined_url",
            "redirect_over_quota_url",
            "capture_fps",
            "baseline_seconds",
            "ad_order",
            "max_check_attempts",
            "check_attempt_seconds",
            "min_usable_frame_ratio",
            "min_face_quality",
            "store_frames",
            "frame_retention_days",
            "retention_days",
        ]
        labels = {
            "client": "Client",
            "consent_text": "Consent text (default language)",
            "participant_id_param": "Participant id parameter",
            "country_param": "Country parameter",
            "require_participant_id": "Refuse links without a participant id",
            "link_signing_secret": "Link signing secret (shared with the panel)",
            "link_signature_param": "Signature parameter",
            "link_timestamp_param": "Time parameter",
            "link_max_age_minutes": "Signed links valid for (minutes)",
            "quota_seat_minutes": "An entry holds its quota seat for (minutes)",
            "redirect_complete_url": "Complete",
            "redirect_failed_url": "Failed",
            "redirect_declined_url": "Declined",
            "redirect_over_quota_url": "Over quota / closed",
            "capture_fps": "Frames per second",
            "baseline_seconds": "Neutral baseline (seconds)",
            "max_check_attempts": "Face check attempts",
            "check_attempt_seconds": "Seconds per check attempt",
            "min_usable_frame_ratio": "Usable frames needed per ad (0–1)",
            "min_face_quality": "Minimum face quality (0–1)",
            "store_frames": "Keep the webcam frames (opt-in; biometric data)",
            "frame_retention_days": "Delete stored frames after (days)",
            "retention_days": "Delete raw per-frame readings after (days)",
        }
        help_texts = {
            "consent_text": "Empty: the portal's standard text, translated into each participant's language.",
            "retention_days": "Per-frame readings go; the per-second aggregates of the dashboards stay.",
            "store_frames": "Off by default: frames are analysed and discarded.",
            "require_participant_id": "On: a link without the participant id parameter is refused with "
            "“This link is incomplete”. Off: it starts a session without an id, which cannot be resumed and "
            "whose redirects carry an empty {pid}.",
            "link_signing_secret": "Blank: links are not signed. With a secret, every link must carry the "
            "panel's HMAC-SHA256 signature, and a returning participant resumes in another browser only with "
            "one. 32-128 printable characters, e.g. 64 hex digits.",
            "link_max_age_minutes": "0: signed links do not expire. Otherwise a link must carry its signed "
            "Unix time (seconds) and is refused once older.",
            "quota_seat_minutes": "Participants in progress hold a seat of their country's quota this long, "
            "so that no more start than the quota needs. 0: no seats are held; completes past the quota are "
            "sent back as over quota.",
        }
        widgets = {
            "consent_text": forms.Textarea(attrs={"rows": 5}),
            "link_signing_secret": forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial.setdefault("countries", format_countries(self.instance))
        for code, name in TRANSLATED_LANGUAGES:
            self.fields[f"consent_{code}"] = forms.CharField(
                required=False,
                label=f"Consent text in {name}",
                widget=forms.Textarea(attrs={"rows": 3}),
            )
            self.initial.setdefault(f"consent_{code}", self.instance.consent_translations.get(code, ""))
        for name in self.fields:
            if name.startswith("redirect_"):
                self.fields[name] = forms.URLField(
                    required=False,
                    max_length=500,
                    assume_scheme="https",
                    label=self.fields[name].label,
                    help_text="",
                )
        limits = {
            "capture_fps": (1, 15),
            "baseline_seconds": (0, 30),
            "max_check_attempts": (1, 10),
            "check_attempt_seconds": (5, 120),
            "min_usable_frame_ratio": (0.0, 1.0),
            "min_face_quality": (0.0, 1.0),
            "frame_retention_days": (1, 365),
            "retention_days": (1, 3650),
            "link_max_age_minutes": (0, 43200),
            "quota_seat_minutes": (0, 1440),
        }
        for name, (low, high) in limits.items():
            field = self.fields[name]
            field.validators += bounded(low, high)
            field.widget.attrs.update({"min": low, "max": high})
            if isinstance(low, float):
                field.widget.attrs["step"] = "0.05"
        # Optional on the form: a submission without them keeps the model's defaults.
        for name in OPTIONAL_WITH_DEFAULT:
            self.fields[name].required = False
        self.locked = has_started(self.instance) if self.instance.pk else False
        if self.locked:
            for name in LOCKED_AFTER_LAUNCH:
                if name in self.fields:
                    self.fields[name].widget.attrs["data-locked"] = "true"
                    self.fields[name].help_text = "Locked: the study has been launched."

    def consent_fields(self):
        return [self[f"consent_{code}"] for code, _name in TRANSLATED_LANGUAGES]

    def clean_countries(self) -> tuple[list[str], dict[str, int]]:
        return parse_countries(self.cleaned_data.get("countries", ""))

    def _clean_param(self, name: str) -> str:
        value = self.cleaned_data[name].strip()
        if not PARAM_NAME.match(value):
            raise ValidationError(PARAM_NAME_MESSAGE)
        return value

    def _default_if_blank(self, name: str):
        value = self.cleaned_data.get(name)
        if value in (None, ""):
            return Study._meta.get_field(name).default
        return value

    def clean_link_signing_secret(self) -> str:
        return self.cleaned_data["link_signing_secret"].strip()

    def clean_link_signature_param(self) -> str:
        self.cleaned_data["link_signature_param"] = self._default_if_blank("link_signature_param")
        return self._clean_param("link_signature_param")

    def clean_link_timestamp_param(self) -> str:
        self.cleaned_data["link_timestamp_param"] = self._default_if_blank("link_timestamp_param")
        return self._clean_param("link_timestamp_param")

    def clean_link_max_age_minutes(self) -> int:
        return self._default_if_blank("link_max_age_minutes")

    def clean_quota_seat_minutes(self) -> int:
        return self._default_if_blank("quota_seat_minutes")

    def clean_participant_id_param(self) -> str:
        return self._clean_param("participant_id_param")

    def clean_country_param(self) -> str:
        return self._clean_param("country_param")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the study a name.")
        return name

    def clean(self) -> dict:
        data = super().clean()  # distinct parameter names: Study.clean, which the model form runs next
        for name in self.fields:
            if name.startswith("redirect_") and data.get(name):
                if not data[name].startswith(("https://", "http://")):
                    self.add_error(name, "Use an http or https address.")
        frame_days, raw_days = data.get("frame_retention_days"), data.get("retention_days")
        if data.get("store_frames") and frame_days and raw_days and frame_days > raw_days:
            self.add_error(
                "frame_retention_days", "Stored frames cannot be kept longer than the raw readings."
            )
        translations = {}
        for code, _name in TRANSLATED_LANGUAGES:
            text = (data.get(f"consent_{code}") or "").strip()
            if text:
                translations[code] = text
        self.instance.consent_translations = translations
        if "countries" in data:
            self.instance.allowed_countries = data["countries"][0]
        if self.instance.pk:
            for name in self.changed_model_fields():
                try:
                    check_study_change_allowed(self.instance_before(), [name])
                except ChangeRefused as refused:
                    if name in self.fields:
                        self.add_error(name, str(refused))
                    else:
                        raise ValidationError(str(refused)) from refused
        return data

    def instance_before(self) -> Study:
        if not hasattr(self, "_before"):
            self._before = Study.objects.get(pk=self.instance.pk)
        return self._before

    def changed_model_fields(self) -> list[str]:
        """The Study fields this submission changes (compared with the saved study)."""
        if not self.instance.pk:
            return []
        before = self.instance_before()
        names = [name for name in self.Meta.fields if name in self.cleaned_data]
        changed = [name for name in names if getattr(before, name) != self.cleaned_data[name]]
        if before.consent_translations != self.instance.consent_translations:
            changed.append("consent_translations")
        if before.allowed_countries != self.instance.allowed_countries:
            changed.append("allowed_countries")
        return changed

    def quotas(self) -> dict[str, int]:
        return self.cleaned_data["countries"][1]


class AdUploadForm(forms.Form):
    title = forms.CharField(max_length=200)
    category = forms.CharField(
        max_length=60,
        required=False,
        help_text="Optional, e.g. snacks or automotive: the analytics norms can compare ads of one category.",
    )
    video = forms.FileField(help_text="WebM or MP4 that browsers play; probed on upload.")

    def clean_title(self) -> str:
        title = self.cleaned_data["title"].strip()
        if not title:
            raise ValidationError("Give the ad a title.")
        return title

    def clean_category(self) -> str:
        category = " ".join(self.cleaned_data["category"].split())
        if any(not character.isprintable() for character in category):
            raise ValidationError("Use printable characters only.")
        return category

    def clean_video(self):
        video = self.cleaned_data["video"]
        self.duration_ms = check_ad_video(video, settings.AD_MAX_UPLOAD_BYTES)
        return video


class PreviewForm(forms.Form):
    language = forms.ChoiceField(choices=settings.LANGUAGES, initial="en")


class DeleteParticipantForm(forms.Form):
    panel_id = forms.CharField(max_length=128, label="Panel participant id")

    def clean_panel_id(self) -> str:
        value = self.cleaned_data["panel_id"].strip()
        if not value:
            raise ValidationError("Enter the participant's panel id.")
        return value


class DeleteStudyForm(forms.Form):
    confirm_name = forms.CharField(max_length=200, label="Type the study's name to confirm")

    def __init__(self, *args, study: Study, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.study = study

    def clean_confirm_name(self) -> str:
        value = self.cleaned_data["confirm_name"].strip()
        if value != self.study.name:
            raise ValidationError("The name does not match; nothing was deleted.")
        return value


# ---- what launching locks (the launch confirmation) --------------------------------------------------------


def setting_display(study: Study, name: str) -> str:
    """A study setting as the set-up page shows it: a choice's label, yes/no, else the value."""
    field = Study._meta.get_field(name)
    value = getattr(study, name)
    if field.choices:
        return str(dict(field.flatchoices).get(value, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def locked_settings(form: StudyForm) -> list[tuple[str, str]]:
    """(label, saved value) of each setting that launching locks (LOCKED_AFTER_LAUNCH), in form order."""
    study = form.instance
    return [
        (str(field.label or pretty_name(name)), setting_display(study, name))
        for name, field in form.fields.items()
        if name in LOCKED_AFTER_LAUNCH
    ]


def settings_editable_after_launch(form: StudyForm) -> list[str]:
    """The labels of the form's settings that a launched study can still change (until it is closed)."""
    translations = {f"consent_{code}" for code, _name in TRANSLATED_LANGUAGES}
    labels = []
    for name, field in form.fields.items():
        if name in LOCKED_AFTER_LAUNCH or name in translations:
            continue
        label = str(field.label or pretty_name(name))
        if name.startswith("redirect_"):
            label = f"{label} redirect"
        elif name == "countries":
            label = "Countries and their quotas"
        labels.append(label)
    return [*labels, "Consent texts per language"]
