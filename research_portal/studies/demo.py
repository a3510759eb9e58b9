"""The demo study that `make run` seeds: an organisation, a live study and a generated ad video."""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from django.contrib.auth import get_user_model
from django.core.files import File
from django.db import transaction

from research_portal.accounts.models import Organization
from research_portal.studies.models import Ad, Study
from research_portal.studies.services import probe_video_duration_ms

DEMO_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "BR", "JP"]
# FFmpeg's WebM muxer lists no FourCC tags, so OpenCV's writer says "tag 0x30385056/'VP80' is not supported
# with codec id 139 and format 'webm / WebM'" for every WebM it opens, and writes valid VP8 all the same. It
# prints that with a plain fprintf to stderr, which neither OPENCV_LOG_LEVEL, OPENCV_FFMPEG_LOGLEVEL nor
# cv2.utils.logging.setLogLevel reach (OpenCV 4.14), and no FourCC avoids it for WebM (-1 lists formats).
HARMLESS_WRITER_NOTICE = re.compile(rb"^OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported ")


@contextmanager
def native_stderr_without(notice: re.Pattern[bytes]) -> Iterator[None]:
    """While inside, what native code prints to the process's stderr (file descriptor 2) goes to a temporary
    file; afterwards every line of it but those matching `notice` is passed on to stderr, so nothing else is
    lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().splitlines(keepends=True):
                if not notice.search(line):
                    os.write(2, line)


def render_demo_ad(path: Path, seconds: int = 10, fps: int = 25, size: tuple[int, int] = (640, 360)) -> None:
    """Write a small VP8 WebM (plays in Chromium and Firefox): a colour sweep with a countdown."""
    width, height = size
    with native_stderr_without(HARMLESS_WRITER_NOTICE):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, size)
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write WebM/VP8 here; upload an ad video in the admin instead.")
    hue_row = np.linspace(0, 179, width, dtype=np.float32)
    for index in range(seconds * fps):
        hue = ((hue_row + index * 2) % 180).astype(np.uint8)
        hsv = np.dstack(
            [
                np.broadcast_to(hue, (height, width)),
                np.full((height, width), 160, np.uint8),
                np.full((height, width), 200, np.uint8),
            ]
        )
        frame = cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2BGR)
        remaining = seconds - index // fps
        scale = width / 640  # text laid out for 640 px wide, scaled to the requested size
        white = (255, 255, 255)
        cv2.putText(
            frame,
            "Demo ad",
            (int(40 * scale), int(120 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            2.2 * scale,
            white,
            max(1, int(5 * scale)),
        )
        cv2.putText(
            frame,
            f"{remaining}",
            (int(width / 2 - 40 * scale), int(280 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            4 * scale,
            white,
            max(1, int(8 * scale)),
        )
        writer.write(frame)
    writer.release()


@dataclass(frozen=True)
class DemoSeed:
    admin_username: str
    admin_password: str
    study: Study


@transaction.atomic
def do_seed_demo(admin_username: str = "admin") -> DemoSeed:
    """Idempotent: reuses the demo objects; the admin gets a fresh password each time (printed once)."""
    password = secrets.token_urlsafe(12)
    user_model = get_user_model()
    admin, _ = user_model.objects.get_or_create(
        username=admin_username, defaults={"is_staff": True, "is_superuser": True}
    )
    admin.is_staff = admin.is_superuser = True
    admin.set_password(password)
    admin.save()

    organization, _ = Organization.objects.get_or_create(name="Demo Agency")
    study, _ = Study.objects.get_or_create(
        organization=organization,
        name="Demo study",
        defaults={"status": Study.Status.LIVE, "allowed_countries": DEMO_COUNTRIES},
    )
    if not study.ads.exists():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "demo-ad.webm"
            render_demo_ad(path)
            ad = Ad(study=study, title="Demo ad", duration_ms=probe_video_duration_ms(path))
            with path.open("rb") as video:
                ad.video.save("demo-ad.webm", File(video), save=False)
            ad.save()
    return DemoSeed(admin_username, password, study)
