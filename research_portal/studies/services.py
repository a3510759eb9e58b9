"""Study set-up: checks and changes that views, admin and commands share."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import cv2
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max

from research_portal.studies.models import Ad, CountryQuota, Study

# Browsers play these reliably; other containers are refused at upload.
PLAYABLE_EXTENSIONS = {"webm", "mp4", "m4v", "ogv", "mov"}


def probe_video_duration_ms(path: str | Path) -> int:
    """Duration of a video file in ms, read with OpenCV; 0 if it cannot be decoded."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
        ok, _ = capture.read()
        if not ok or fps <= 0:
            return 0
        if frames <= 0:
            # Some containers (streamed WebM) carry no frame count: count by decoding.
            frames = 1
            while capture.grab():
                frames += 1
        return int(round(frames / fps * 1000))
    finally:
        capture.release()


def check_ad_video(upload: UploadedFile, max_bytes: int) -> int:
    """Validate an uploaded ad video; returns its duration in ms or raises ValidationError."""
    extension = Path(upload.name).suffix.lower().lstrip(".")
    if extension not in PLAYABLE_EXTENSIONS:
        raise ValidationError(f"Upload a video browsers can play ({', '.join(sorted(PLAYABLE_EXTENSIONS))}).")
    if upload.size > max_bytes:
        raise ValidationError(f"The video is {upload.size} bytes; the limit is {max_bytes}.")
    if hasattr(upload, "temporary_file_path"):
        duration_ms = probe_video_duration_ms(upload.temporary_file_path())
    else:
        with tempfile.NamedTemporaryFile(suffix=f".{extension}") as copy:
            for chunk in upload.chunks():
                copy.write(chunk)
            copy.flush()
            duration_ms = probe_video_duration_ms(copy.name)
        upload.seek(0)
    if duration_ms <= 0:
        raise ValidationError("This file could not be decoded as a video.")
    return duration_ms


# ---- study set-up (the set-up pages and their tests) -------------------------------------------------------

# Fields that define how data is captured and validated: changing them once participants have taken part
# would mix incomparable sessions in one study.
LOCKED_AFTER_LAUNCH = {
    "capture_fps": "the frame rate",
    "baseline_seconds": "the baseline length",
    "min_usable_frame_ratio": "the usable-frame ratio a complete needs",
    "min_face_quality": "the minimum face quality",
    "ad_order": "the ad order",
    "store_frames": "whether frames are stored",
    "participant_id_param": "the participant id parameter (links already sent to the panel use it)",
    "country_param": "the country parameter (links already sent to the panel use it)",
}


class ChangeRefused(Exception):
    """A change the study's state does not allow; the message says why, for the admin."""


def has_started(study: Study) -> bool:
    """Launched at least once, or real participants have sessions: the study's data must stay comparable."""
    return study.status != Study.Status.DRAFT or study.sessions.filter(is_preview=False).exists()


def check_study_change_allowed(study: Study, changed_fields=(), ads: bool = False) -> None:
    """Raise ChangeRefused when a change would corrupt the data of a launched study.

    `changed_fields`: Study fields about to change; `ads=True`: adding, replacing, removing or reordering ads.
    """
    if study.status == Study.Status.CLOSED and (changed_fields or ads):
        raise ChangeRefused("This study is closed; its set-up can no longer change.")
    if not has_started(study):
        return
    if ads:
        raise ChangeRefused(
            "This study has been launched: adding, replacing, removing or reordering ads would mix sessions "
            "that saw different ads. Create a new study for a new set of ads."
        )
    locked = [LOCKED_AFTER_LAUNCH[name] for name in changed_fields if name in LOCKED_AFTER_LAUNCH]
    if locked:
        raise ChangeRefused(
            f"This study has been launched, so {', '.join(locked)} can no longer change: sessions captured "
            "before and after would not be comparable."
        )


# Which status changes the set-up page offers, and what each needs.
TRANSITIONS = {
    "launch": ({Study.Status.DRAFT}, Study.Status.LIVE),
    "pause": ({Study.Status.LIVE}, Study.Status.PAUSED),
    "resume": ({Study.Status.PAUSED}, Study.Status.LIVE),
    "close": ({Study.Status.LIVE, Study.Status.PAUSED}, Study.Status.CLOSED),
}


def check_status_change(study: Study, action: str) -> str:
    """The new status for `action`, or ChangeRefused with the reason."""
    if action not in TRANSITIONS:
        raise ChangeRefused(f"Unknown action {action!r}.")
    allowed_from, new_status = TRANSITIONS[action]
    if study.status not in allowed_from:
        raise ChangeRefused(f"A {study.get_status_display().lower()} study cannot {action}.")
    if action == "launch":
        problems = []
        if not study.ads.exists():
            problems.append("upload at least one ad")
        if any(ad.duration_ms <= 0 for ad in study.ads.all()):
            problems.append("replace the ads whose duration could not be measured")
        if problems:
            raise ChangeRefused("Before launching, " + " and ".join(problems) + ".")
    return new_status


def participant_links(study: Study, base_url: str) -> list[tuple[str, str]]:
    """(country or "", link) per allowed country, with the study's own parameter names; the panel replaces
    PARTICIPANT_ID with its participant's id."""
    entry = f"{base_url.rstrip('/')}/s/{study.public_id}/"
    countries = list(study.allowed_countries) or [""]
    links = []
    for country in countries:
        query = f"?{study.participant_id_param}=PARTICIPANT_ID"
        query += f"&{study.country_param}={country or 'COUNTRY'}"
        links.append((country, entry + query))
    return links


# ---- changes (each in one transaction, each audited) -------------------------------------------------


def audit(actor, action: str, study: Study, **detail) -> None:
    from research_portal.privacy.audit import do_audit

    do_audit(actor, action, study=study, **detail)


@transaction.atomic
def do_save_study(study: Study, quotas: dict[str, int], actor, changed_fields: list[str]) -> Study:
    """Create or update a study with its country quotas; nothing is half-saved if any part fails."""
    from research_portal.privacy.models import AuditLog

    creating = study.pk is None
    if not creating:
        check_study_change_allowed(Study.objects.select_for_update().get(pk=study.pk), changed_fields)
    study.full_clean()
    study.save()
    study.quotas.exclude(country__in=list(quotas)).delete()
    for country, target in quotas.items():
        CountryQuota.objects.update_or_create(study=study, country=country, defaults={"target": target})
    if creating:
        audit(actor, AuditLog.Action.STUDY_CREATED, study)
    elif changed_fields:
        audit(actor, AuditLog.Action.STUDY_CHANGED, study, fields=sorted(changed_fields))
    return study


@transaction.atomic
def do_add_ad(study: Study, title: str, video: UploadedFile, duration_ms: int, actor) -> Ad:
    """Append a validated ad video to a study's playlist (refused once the study has been launched)."""
    from research_portal.privacy.models import AuditLog

    study = Study.objects.select_for_update().get(pk=study.pk)
    check_study_change_allowed(study, ads=True)
    last = study.ads.aggregate(last=Max("position"))["last"]
    ad = Ad(study=study, title=title, duration_ms=duration_ms, position=0 if last is None else last + 1)
    ad.video.save(video.name, video, save=False)
    try:
        ad.save()
    except Exception:
        ad.video.delete(save=False)
        raise
    audit(actor, AuditLog.Action.AD_ADDED, study, ad=ad.pk, title=title, duration_ms=duration_ms)
    return ad


@transaction.atomic
def do_move_ad(study: Study, ad: Ad, offset: int) -> None:
    """Move an ad one place up (-1) or down (+1) in the fixed playlist order."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    check_study_change_allowed(study, ads=True)
    ads = list(study.ads.order_by("position", "id"))
    index = next(i for i, item in enumerate(ads) if item.pk == ad.pk)
    target = index + offset
    if 0 <= target < len(ads):
        ads[index], ads[target] = ads[target], ads[index]
    for position, item in enumerate(ads):
        if item.position != position:
            Ad.objects.filter(pk=item.pk).update(position=position)


@transaction.atomic
def do_remove_ad(study: Study, ad: Ad, actor) -> None:
    from research_portal.privacy.models import AuditLog

    study = Study.objects.select_for_update().get(pk=study.pk)
    check_study_change_allowed(study, ads=True)
    name = ad.video.name
    audit(actor, AuditLog.Action.AD_REMOVED, study, ad=ad.pk, title=ad.title)
    ad.delete()
    storage = Ad._meta.get_field("video").storage
    transaction.on_commit(lambda: storage.delete(name))


@transaction.atomic
def do_change_status(study: Study, action: str, actor) -> Study:
    from research_portal.privacy.models import AuditLog

    study = Study.objects.select_for_update().get(pk=study.pk)
    new_status = check_status_change(study, action)
    old_status = study.status
    study.status = new_status
    study.save(update_fields=["status"])
    audit(actor, AuditLog.Action.STUDY_STATUS, study, transition=action, old=old_status, new=new_status)
    return study


def do_start_preview(study: Study, language: str, country: str = ""):
    """A participant session for the study's admin to try it: works in any status, skips quotas and never
    counts toward them or the analytics; its end page leads back to the set-up page."""
    from research_portal.capture.participation import do_start_session

    if not study.ads.exists():
        raise ChangeRefused("Upload an ad first: the preview plays the study's ads.")
    country = country or (study.allowed_countries[0] if study.allowed_countries else "")
    return do_start_session(
        study, f"preview-{secrets.token_hex(4)}", country, language, "unknown", is_preview=True
    )
