"""check_frame(): the validation every binary socket message goes through."""

import math

import pytest

from research_portal.capture.services import (
    FRAME_HEADER,
    CaptureContext,
    FrameRateLimiter,
    FrameRejected,
    check_frame,
)

NOW_MS = 1_790_000_000_000.0
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
CONTEXT = CaptureContext(
    session_id=1,
    session_state="viewing",
    ad_durations_ms={7: 30_000, 0: 5_000},
    fps=5,
    max_frame_bytes=1000,
    next_seq=0,
    store_frames=False,
)


def message(seq=3, ad_id=7, media_ms=1200, capture_ms=NOW_MS, body=JPEG) -> bytes:
    return FRAME_HEADER.pack(seq, ad_id, media_ms, capture_ms) + body


def rejection(data: bytes) -> FrameRejected:
    with pytest.raises(FrameRejected) as caught:
        check_frame(data, CONTEXT, now_ms=NOW_MS)
    return caught.value


def test_valid_frame_is_parsed():
    frame = check_frame(message(), CONTEXT, now_ms=NOW_MS)
    assert (frame.seq, frame.ad_id, frame.media_time_ms, frame.capture_time_ms) == (3, 7, 1200, NOW_MS)
    assert frame.jpeg == JPEG


def test_short_message_is_a_bad_header():
    assert rejection(b"\x00" * 10).code == "bad_header"


def test_non_jpeg_body_is_rejected_with_its_seq():
    rejected = rejection(message(seq=9, body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 20))
    assert (rejected.code, rejected.seq) == ("not_jpeg", 9)


def test_oversized_frame_is_rejected():
    assert rejection(message(body=JPEG + b"\x00" * 1000)).code == "too_large"


def test_ad_outside_the_study_is_rejected():
    assert rejection(message(ad_id=8)).code == "unknown_ad"


def test_baseline_frames_use_ad_zero_within_the_baseline_duration():
    assert check_frame(message(ad_id=0, media_ms=4_000), CONTEXT, now_ms=NOW_MS).ad_id == 0
    assert rejection(message(ad_id=0, media_ms=8_000)).code == "bad_time"


@pytest.mark.parametrize(
    "media_ms, capture_ms",
    [(40_000, NOW_MS), (1000, math.nan), (1000, math.inf), (1000, 0.0), (1000, NOW_MS + 3600_000)],
)
def test_nonsense_times_are_rejected(media_ms, capture_ms):
    assert rejection(message(media_ms=media_ms, capture_ms=capture_ms)).code == "bad_time"


def test_frame_resent_hours_later_is_still_accepted():
    assert check_frame(message(capture_ms=NOW_MS - 3 * 3600_000), CONTEXT, now_ms=NOW_MS).seq == 3


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limiter_passes_a_resend_burst_then_throttles_a_flood():
    clock = FakeClock()
    limiter = FrameRateLimiter(fps=5, burst=100, clock=clock)
    assert all(limiter.allow() for _ in range(100))
    assert not limiter.allow()
    clock.now += 1.0  # refills at 3x the capture rate
    assert sum(limiter.allow() for _ in range(100)) == 15
