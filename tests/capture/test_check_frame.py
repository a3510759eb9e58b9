"""parse_frame(): the validation every binary socket message goes through."""

import dataclasses
import math

import pytest

from research_portal.capture.socket_limits import TokenBucket
from research_portal.capture.wire import (
    FRAME_HEADER,
    MAX_WIRE_INT,
    SEQ_HEADROOM,
    CaptureContext,
    FrameRejected,
    parse_frame,
)

NOW_MS = 1_790_000_000_000.0
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
CONTEXT = CaptureContext(
    session_id=1,
    session_state="viewing",
    ad_durations_ms={7: 30_000, 0: 5_000, 9: 0},  # ad 9: duration unknown (not probed)
    fps=5,
    max_frame_bytes=1000,
    next_seq=0,
    store_frames=False,
    checks_passed_ms=NOW_MS - 60_000,  # the camera check a minute ago
)


def message(seq=3, ad_id=7, media_ms=1200, capture_ms=NOW_MS, body=JPEG) -> bytes:
    return FRAME_HEADER.pack(seq, ad_id, media_ms, capture_ms) + body


def rejection(data: bytes) -> FrameRejected:
    with pytest.raises(FrameRejected) as caught:
        parse_frame(data, CONTEXT, now_ms=NOW_MS)
    return caught.value


def test_valid_frame_is_parsed():
    frame = parse_frame(message(), CONTEXT, now_ms=NOW_MS)
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
    assert parse_frame(message(ad_id=0, media_ms=4_000), CONTEXT, now_ms=NOW_MS).ad_id == 0
    assert rejection(message(ad_id=0, media_ms=8_000)).code == "bad_time"


@pytest.mark.parametrize(
    "media_ms, capture_ms",
    [(40_000, NOW_MS), (1000, math.nan), (1000, math.inf), (1000, 0.0), (1000, NOW_MS + 3600_000)],
)
def test_nonsense_times_are_rejected(media_ms, capture_ms):
    assert rejection(message(media_ms=media_ms, capture_ms=capture_ms)).code == "bad_time"


def test_frame_resent_hours_later_is_still_accepted():
    assert parse_frame(message(capture_ms=NOW_MS - 3 * 3600_000), CONTEXT, now_ms=NOW_MS).seq == 3


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limiter_passes_a_resend_burst_then_throttles_a_flood():
    clock = FakeClock()
    limiter = TokenBucket(rate=15, burst=100, clock=clock)
    assert all(limiter.allow() for _ in range(100))
    assert not limiter.allow()
    clock.now += 1.0
    assert sum(limiter.allow() for _ in range(100)) == 15
    limiter.set_rate(3)  # flow control lowered the rate: what was earned stays, the rest comes slower
    clock.now += 1.0
    assert sum(limiter.allow() for _ in range(100)) == 3


# ---- every integer of the header fits its column (a 4-byte signed integer) --------------------------------


@pytest.mark.parametrize("seq", [0xFFFFFFFF, 2**31, MAX_WIRE_INT])
def test_seq_beyond_the_column_is_refused_with_its_seq(seq):
    rejected = rejection(message(seq=seq))
    assert (rejected.code, rejected.seq) == ("bad_seq", seq)


def test_seq_is_bounded_by_what_the_session_can_have_numbered_since_its_camera_check():
    # A minute at 5 fps is 300 frames; twice that plus the headroom is accepted, one more is not.
    limit = 2 * 5 * 60 + SEQ_HEADROOM
    assert parse_frame(message(seq=limit), CONTEXT, now_ms=NOW_MS).seq == limit
    assert rejection(message(seq=limit + 1)).code == "bad_seq"
    # The bound grows with time: the same seq is fine ten seconds later.
    assert parse_frame(message(seq=limit + 1), CONTEXT, now_ms=NOW_MS + 10_000).seq == limit + 1


def test_the_next_seq_handed_out_is_always_accepted_with_headroom_above_it():
    # However the numbering got there, a client continuing from next_seq is never refused.
    far = dataclasses.replace(CONTEXT, next_seq=50_000)
    for seq in (50_000, 50_000 + SEQ_HEADROOM):
        assert parse_frame(message(seq=seq), far, now_ms=NOW_MS).seq == seq
    assert rejection_with(far, message(seq=50_001 + SEQ_HEADROOM)).code == "bad_seq"
    # ...and never beyond the column.
    top = dataclasses.replace(CONTEXT, next_seq=MAX_WIRE_INT)
    assert parse_frame(message(seq=MAX_WIRE_INT), top, now_ms=NOW_MS).seq == MAX_WIRE_INT
    assert rejection_with(top, message(seq=MAX_WIRE_INT + 1)).code == "bad_seq"


def test_media_time_beyond_the_column_is_refused_even_for_an_ad_without_a_duration():
    assert parse_frame(message(ad_id=9, media_ms=90_000), CONTEXT, now_ms=NOW_MS).media_time_ms == 90_000
    for media_ms in (MAX_WIRE_INT + 1, 0xFFFFFFFF):
        assert rejection(message(ad_id=9, media_ms=media_ms)).code == "bad_time"


def test_ad_id_beyond_the_column_is_an_unknown_ad():
    assert rejection(message(ad_id=0xFFFFFFFF)).code == "unknown_ad"


def rejection_with(context: CaptureContext, data: bytes) -> FrameRejected:
    with pytest.raises(FrameRejected) as caught:
        parse_frame(data, context, now_ms=NOW_MS)
    return caught.value
