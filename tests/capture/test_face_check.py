"""The camera and face check endpoint: real frames through the real pipeline, problems in words,
a pass decided by the server, and failed attempts ending in the Failed redirect."""

import cv2
import numpy as np
import pytest

from research_portal.capture.face_check import CHECK_PASS_STREAK
from research_portal.capture.models import ParticipantSession, SessionEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def consented(acme) -> ParticipantSession:
    return ParticipantSession.objects.create(
        study=acme.study, state="consented", external_participant_id="p-1", ad_sequence=[acme.ad.pk]
    )


def transform(jpeg: bytes, change) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", change(image))[1].tobytes()


def post_frame(client, session, jpeg: bytes, fps: float = 15.0):
    return client.post(f"/p/{session.token}/check/frame?fps={fps}", jpeg, content_type="image/jpeg")


def test_good_frames_in_a_row_pass_the_check(client, consented, face_jpegs):
    answers = [post_frame(client, consented, face_jpegs[0]).json() for _ in range(CHECK_PASS_STREAK)]
    assert all(answer["problems"] == [] for answer in answers)
    assert [answer["passed"] for answer in answers] == [False] * (CHECK_PASS_STREAK - 1) + [True]
    consented.refresh_from_db()
    assert consented.checks_passed_at is not None
    assert client.get(f"/p/{consented.token}/check/").url == f"/p/{consented.token}/watch/"


def test_a_bad_frame_resets_the_streak(client, consented, face_jpegs):
    blank = transform(face_jpegs[0], lambda image: np.full_like(image, 128))
    post_frame(client, consented, face_jpegs[0])
    post_frame(client, consented, face_jpegs[0])
    assert post_frame(client, consented, blank).json()["problems"] == ["no_face"]
    assert post_frame(client, consented, face_jpegs[0]).json()["passed"] is False


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda image: (image * 0.12).astype(np.uint8), "too_dark"),
        (lambda image: cv2.GaussianBlur(image, (0, 0), 6), "blurry"),
        (
            lambda image: cv2.copyMakeBorder(
                cv2.resize(image, (64, 48)), 0, 192, 0, 256, cv2.BORDER_CONSTANT
            ),
            "not_centred",
        ),
    ],
)
def test_problems_come_back_as_codes_and_words(client, consented, face_jpegs, change, expected):
    answer = post_frame(client, consented, transform(face_jpegs[0], change)).json()
    assert expected in answer["problems"], answer
    assert answer["messages"] and answer["passed"] is False


def test_a_slow_camera_is_reported(client, consented, face_jpegs):
    answer = post_frame(client, consented, face_jpegs[0], fps=2).json()
    assert answer["problems"] == ["low_frame_rate"]
    assert "camera is too slow" in answer["messages"][0]


def test_bad_check_requests_get_clear_errors(client, consented):
    assert (
        client.post(f"/p/{consented.token}/check/frame", b"GIF89a", content_type="image/gif").status_code
        == 400
    )
    jpeg_like = b"\xff\xd8\xff" + b"0" * 10
    assert (
        client.post(
            f"/p/{consented.token}/check/frame?fps=x", jpeg_like, content_type="image/jpeg"
        ).status_code
        == 400
    )
    assert post_frame(client, consented, jpeg_like).json()["problems"] == ["unreadable"]


def test_failed_attempts_end_in_the_failed_redirect(client, consented, acme):
    acme.study.max_check_attempts = 2
    acme.study.redirect_failed_url = "https://panel.example/f?id={pid}"
    acme.study.save()
    url = f"/p/{consented.token}/check/attempt-failed"
    first = client.post(url, {"problems": ["too_dark"]}, content_type="application/json").json()
    assert first == {"failed": False, "next": ""}
    second = client.post(url, {"problems": ["too_dark"]}, content_type="application/json").json()
    assert second == {"failed": True, "next": f"/p/{consented.token}/end/"}
    consented.refresh_from_db()
    assert consented.state == "failed" and "too_dark" in consented.exclusion_reason
    assert SessionEvent.objects.filter(session=consented, name="check_failed").count() == 2
    page = client.get(second["next"]).content.decode()
    assert "https://panel.example/f?id=p-1" in page
    # The frame endpoint now refuses: the session has ended.
    assert (
        client.post(
            f"/p/{consented.token}/check/frame?fps=15", b"\xff\xd8\xff", content_type="image/jpeg"
        ).status_code
        == 409
    )


def test_a_client_flooding_check_frames_is_throttled(client, consented, face_jpegs, settings):
    from django.core.cache import cache

    cache.clear()
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "check_frame": "3/60"}
    statuses = [post_frame(client, consented, face_jpegs[0]).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert post_frame(client, consented, face_jpegs[0]).json() == {"error": "rate_limited"}
