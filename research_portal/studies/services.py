"""Study set-up: checks and changes that views, admin and commands share."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max

from research_portal.privacy.audit import do_audit
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, CountryQuota, Study

# What every current browser plays (Chromium, Firefox, Safari), per container: anything else is refused at
# upload, naming what was found. OpenCV's FFmpeg reader reports the codec as a FourCC; the container is read
# from the file's first bytes, not trusted from its name.
PLAYABLE_CODECS = {
    "mp4": {"h264": "H.264", "avc1": "H.264", "avc3": "H.264", "vp09": "VP9", "VP90": "VP9", "av01": "AV1"},
    "webm": {"VP80": "VP8", "VP90": "VP9", "av01": "AV1", "AV01": "AV1"},
}
# What browsers will not play that uploads often carry: named in the refusal.
KNOWN_CODECS = {
    "FMP4": "MPEG-4 Part 2", "mp4v": "MPEG-4 Part 2", "XVID": "MPEG-4 Part 2 (Xvid)", "DIVX": "MPEG-4 Part 2",
    "hev1": "H.265/HEVC", "hvc1": "H.265/HEVC", "hevc": "H.265/HEVC", "MJPG": "Motion JPEG",
    "mjpg": "Motion JPEG", "theo": "Theora", "mpg2": "MPEG-2", "wmv3": "WMV",
}  # fmt: skip
PLAYABLE_EXTENSIONS = {"mp4": "mp4", "m4v": "mp4", "webm": "webm"}
# An ad shorter than this is not an ad (a still image renamed .mp4 decodes as one 40 ms frame).
MIN_AD_DURATION_MS = 1000


@dataclass(frozen=True)
class VideoProbe:
    """What an uploaded file holds, as far as a browser's playback is concerned."""

    container: str | None  # "mp4", "webm", or None when the first bytes are neither
    codec: str  # FourCC of the video stream ("" when there is none)
    duration_ms: int
    frames: int


def sniff_container(path: str | Path) -> str | None:
    """ "mp4" (an ISO base media file: `ftyp` box first), "webm" (EBML header), else None."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def probe_video(path: str | Path) -> VideoProbe:
    """Container, codec, duration and frame count of a video file, read with OpenCV (zeros if undecodable)."""
    container = sniff_container(path)
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return VideoProbe(container, "", 0, 0)
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC) or 0)
        codec = fourcc.to_bytes(4, "little").decode("latin-1").strip("\x00 ") if fourcc > 0 else ""
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
        ok, _ = capture.read()
        if not ok or fps <= 0:
            return VideoProbe(container, codec, 0, 0)
        if frames <= 0:
            # Some containers (streamed WebM) carry no frame count: count by decoding.
            frames = 1
            while capture.grab():
                frames += 1
        return VideoProbe(container, codec, int(round(frames / fps * 1000)), int(frames))
    finally:
        capture.release()


def probe_video_duration_ms(path: str | Path) -> int:
    """Duration of a video file in ms, read with OpenCV; 0 if it cannot be decoded."""
    return probe_video(path).duration_ms


def check_playable(probe: VideoProbe, extension: str) -> None:
    """ValidationError unless browsers can play the probed file as an ad: its real container matches its name,
    its video codec plays in that container, and it lasts at least MIN_AD_DURATION_MS."""
    expected = PLAYABLE_EXTENSIONS[extension]
    if probe.container is None:
        raise ValidationError("This file is not a video: it is neither an MP4 nor a WebM file inside.")
    if probe.container != expected:
        raise ValidationError(
            f"This file is named .{extension} but holds a {probe.container.upper()} video: rename it "
            f".{probe.container}."
        )
    if not probe.codec or probe.frames == 0:
        raise ValidationError("This file holds no video stream that could be decoded.")
    playable = PLAYABLE_CODECS[expected]
    if probe.codec not in playable:
        name = KNOWN_CODECS.get(probe.codec, f"codec {probe.codec!r}")
        accepted = ", ".join(sorted(set(playable.values())))
        raise ValidationError(
            f"Browsers cannot play {name} video in {expected.upper()}: re-encode it as {accepted} "
            "(for example H.264 in MP4, or VP9 in WebM)."
        )
    if probe.duration_ms < MIN_AD_DURATION_MS:
        raise ValidationError(
            f"This video lasts {probe.duration_ms} ms ({probe.frames} frame(s)); an ad must last at least "
            f"{MIN_AD_DURATION_MS / 1000:g} s."
        )


def check_ad_video(upload: UploadedFile, max_bytes: int) -> int:
    """Validate an uploaded ad video; returns its duration in ms or raises ValidationError."""
    extension = Path(upload.name).suffix.lower().lstrip(".")
    if extension not in PLAYABLE_EXTENSIONS:
        raise ValidationError(f"Upload an MP4 or WebM video ({', '.join(sorted(PLAYABLE_EXTENSIONS))}).")
    if upload.size > max_bytes:
        raise ValidationError(f"The video is {upload.size} bytes; the limit is {max_bytes}.")
    if hasattr(upload, "temporary_file_path"):
        probe = probe_video(upload.temporary_file_path())
    else:
        with tempfile.NamedTemporaryFile(suffix=f".{extension}") as copy:
            for chunk in upload.chunks():
                copy.write(chunk)
            copy.flush()
            probe = probe_video(copy.name)
        upload.seek(0)
    check_playable(probe, extension)
    return probe.duration_ms


def check_stored_ad_playable(ad: Ad) -> None:
    """The same check on an ad already stored (uploaded before it existed, or through other means)."""
    extension = Path(ad.video.name).suffix.lower().lstrip(".")
    if extension not in PLAYABLE_EXTENSIONS:
        raise ValidationError(f"“{ad.title}” is a .{extension} file; upload an MP4 or WebM video instead.")
    try:
        probe = probe_video(ad.video.path)
    except OSError as error:
        raise ValidationError(f"“{ad.title}”: its video file cannot be read ({error.strerror}).") from error
    try:
        check_playable(probe, extension)
    except ValidationError as error:
        raise ValidationError(f"“{ad.title}”: {' '.join(error.messages)}") from error


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
        check_launch_ready(study)
    return new_status


def check_launch_ready(study: Study) -> None:
    """ChangeRefused naming what to do first unless the study's ads let it launch: at least one, each one
    playable. Only a draft's ads can still be replaced; a live study's unplayable ad (uploaded before this
    check existed) is handled where it shows: the participant's session ends Failed, `ad_unplayable`."""
    problems = []
    if not study.ads.exists():
        problems.append("upload at least one ad")
    for ad in study.ads.order_by("position", "id"):
        try:
            check_stored_ad_playable(ad)
        except ValidationError as error:
            problems.append("replace " + " ".join(error.messages))
    if problems:
        raise ChangeRefused("Before launching, " + "; ".join(problems) + ".")


def participant_link_template(study: Study, base_url: str, country: str) -> str:
    """The study link with the study's own parameter names; the panel replaces PARTICIPANT_ID with its
    participant's id and, for a study that signs links, adds the time (UNIX_TIME) and the signature."""
    link = f"{base_url.rstrip('/')}/s/{study.public_id}/"
    link += f"?{study.participant_id_param}=PARTICIPANT_ID&{study.country_param}={country}"
    if study.signs_links:
        if study.link_max_age_minutes:
            link += f"&{study.link_timestamp_param}=UNIX_TIME"
        link += f"&{study.link_signature_param}=HMAC_SHA256"
    return link


def participant_links(study: Study, base_url: str) -> list[tuple[str, str]]:
    """(country or "", link) per allowed country (participant_link_template)."""
    countries = list(study.allowed_countries) or [""]
    return [
        (country, participant_link_template(study, base_url, country or "COUNTRY")) for country in countries
    ]


# ---- changes (each in one transaction, each audited) -------------------------------------------------


def audit(actor, action: str, study: Study, **detail) -> None:
    do_audit(actor, action, study=study, **detail)


@transaction.atomic
def do_save_study(study: Study, quotas: dict[str, int], actor, changed_fields: list[str]) -> Study:
    """Create or update a study with its country quotas; nothing is half-saved if any part fails."""
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
def do_add_ad(
    study: Study, title: str, video: UploadedFile, duration_ms: int, actor, category: str = ""
) -> Ad:
    """Append a validated ad video to a study's playlist (refused once the study has been launched)."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    check_study_change_allowed(study, ads=True)
    last = study.ads.aggregate(last=Max("position"))["last"]
    position = 0 if last is None else last + 1
    ad = Ad(study=study, title=title, duration_ms=duration_ms, position=position, category=category)
    ad.video.save(video.name, video, save=False)
    try:
        ad.save()
    except Exception:
        ad.video.delete(save=False)
        raise
    details = {"ad": ad.pk, "title": title, "duration_ms": duration_ms, "category": category}
    audit(actor, AuditLog.Action.AD_ADDED, study, **details)
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
    study = Study.objects.select_for_update().get(pk=study.pk)
    check_study_change_allowed(study, ads=True)
    name = ad.video.name
    audit(actor, AuditLog.Action.AD_REMOVED, study, ad=ad.pk, title=ad.title)
    ad.delete()
    storage = Ad._meta.get_field("video").storage
    transaction.on_commit(lambda: storage.delete(name))


@transaction.atomic
def do_change_status(study: Study, action: str, actor) -> Study:
    study = Study.objects.select_for_update().get(pk=study.pk)
    new_status = check_status_change(study, action)
    old_status = study.status
    study.status = new_status
    study.save(update_fields=["status"])
    audit(actor, AuditLog.Action.STUDY_STATUS, study, transition=action, old=old_status, new=new_status)
    return study
