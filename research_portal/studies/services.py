"""Study set-up: checks and changes that views, admin and commands share."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile

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
