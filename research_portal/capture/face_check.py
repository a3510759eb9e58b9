"""The device and face check before the first ad, driven by the same quality measures the workers store.

The browser sends a camera frame every ~half second; each answer lists what is wrong in codes the page
turns into words ("Move closer"). The server, not the browser, decides that the check passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from inference.pipeline import FrameReading, get_pipeline, jpeg_size
from inference.quality import (
    NO_FACE,
    TOO_BRIGHT,
    TOO_BRIGHT_ABOVE,
    TOO_DARK,
    TOO_DARK_BELOW,
    quality_problems,
)
from research_portal.capture.models import ParticipantSession, SessionEvent
from research_portal.capture.participation import do_end_session, do_record_event

# Three good frames in a row (about 1.5 s at the page's 2 checks/s) before the ads may start.
CHECK_PASS_STREAK = 3
# The face centre must lie within this fraction of the frame size from the frame centre.
CENTRE_TOLERANCE = 0.22
# Back-lit: the face is much darker than the picture around it (a window behind the participant).
BACKLIT_FACE_TO_FRAME = 0.6
BACKLIT_FACE_MAX_BRIGHTNESS = 0.35

NOT_CENTRED = "not_centred"
BACKLIT = "backlit"
LOW_FRAME_RATE = "low_frame_rate"
UNREADABLE = "unreadable"
# A check frame is a camera picture (the page sends 320x240; a 4K camera's frame has 8.3 million pixels). A
# JPEG whose header claims more, or whose size cannot be read, is not decoded: OpenCV would allocate what the
# header claims (gigabytes from a few bytes), or raise past its own limit.
MAX_CHECK_FRAME_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class CheckResult:
    problems: list[str]
    passed: bool
    face_box: tuple[int, int, int, int] | None = None


def face_check_problems(
    image: np.ndarray | None, reading: FrameReading, camera_fps: float, required_fps: int
) -> list[str]:
    """Problem codes for one camera frame, most important first; [] means the frame is good."""
    problems: list[str] = []
    if camera_fps < required_fps:
        problems.append(LOW_FRAME_RATE)
    face = reading.primary_face
    if image is None or reading.error:
        return [*problems, UNREADABLE]
    if face is None:
        # In a dark (or glaring) room the detector finds nothing; say what the participant can fix.
        frame_brightness = float(image.mean()) / 255.0
        if frame_brightness < TOO_DARK_BELOW:
            problems.append(TOO_DARK)
        elif frame_brightness > TOO_BRIGHT_ABOVE:
            problems.append(TOO_BRIGHT)
        return [*problems, NO_FACE]
    height, width = image.shape[:2]
    x, y, w, h = face.box
    if (
        abs((x + w / 2) / width - 0.5) > CENTRE_TOLERANCE
        or abs((y + h / 2) / height - 0.5) > CENTRE_TOLERANCE
    ):
        problems.append(NOT_CENTRED)
    problems.extend(quality_problems(face.quality))
    frame_brightness = float(image.mean()) / 255.0
    face_brightness = face.quality.brightness
    if (
        face_brightness < BACKLIT_FACE_MAX_BRIGHTNESS
        and face_brightness < BACKLIT_FACE_TO_FRAME * frame_brightness
    ):
        problems.append(BACKLIT)
    return problems


def do_check_camera_frame(session: ParticipantSession, jpeg: bytes, camera_fps: float) -> CheckResult:
    """Analyse one check frame in-process (fast answer) and advance the session's good-frame streak."""
    image = read_camera_frame(jpeg)
    reading = get_pipeline().analyze_images([image])[0]
    problems = face_check_problems(image, reading, camera_fps, session.study.capture_fps)
    passed = do_record_check_result(session, good=not problems)
    face = reading.primary_face
    return CheckResult(problems, passed, None if face is None else tuple(int(v) for v in face.box))


def read_camera_frame(jpeg: bytes) -> np.ndarray | None:
    """The check frame as a BGR image; None (`unreadable`) unless it is a JPEG of a camera frame's size."""
    size = jpeg_size(jpeg)
    if size is None or size[0] * size[1] > MAX_CHECK_FRAME_PIXELS:
        return None
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


@transaction.atomic
def do_record_check_result(session: ParticipantSession, good: bool) -> bool:
    """Count consecutive good frames; returns True once the check has passed."""
    session = ParticipantSession.objects.select_for_update().get(pk=session.pk)
    if session.checks_passed_at is not None:
        return True
    session.check_good_streak = session.check_good_streak + 1 if good else 0
    if session.check_good_streak >= CHECK_PASS_STREAK:
        session.checks_passed_at = timezone.now()
    session.save(update_fields=["check_good_streak", "checks_passed_at"])
    return session.checks_passed_at is not None


def do_fail_check_attempt(session: ParticipantSession, problems: list[str]) -> bool:
    """One timed-out attempt; after the study's allowance the session fails. Returns True if it failed."""
    ParticipantSession.objects.filter(pk=session.pk).update(
        check_attempts=F("check_attempts") + 1, check_good_streak=0
    )
    session.refresh_from_db()
    do_record_event(session.pk, SessionEvent.Name.CHECK_FAILED, detail=",".join(problems))
    if session.check_attempts >= session.study.max_check_attempts:
        reason = "device/face check failed" + (f": {', '.join(problems)}" if problems else "")
        do_end_session(session, ParticipantSession.State.FAILED, reason)
        return True
    return False
