"""Unplayable ads, the participant side (docs/security.md, L9): a browser that cannot play an ad reports
it over the capture socket (`{"type": "ad_unplayable", "ad_id": n, "error": "...", "media_time_ms": n}`),
and the session ends Failed with the exclusion reason `ad_unplayable` naming the ad, through the domain
function that ends sessions (validation.do_fail_unplayable_ad -> participation.do_end_session).

The report holds only for the session's own current ad (the ad of its newest frame, or the next one; the
first before any ad frame) and only while it is viewing; anything else is refused with a clear error code
(`bad_report`, `wrong_ad`, `not_viewing`) on a socket that stays open, never a 1011 or a log line at ERROR.
Real consumer, channel layer (Redis with REDIS_URL) and Postgres (with DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.utils import timezone

from research_portal.analytics.dashboard import reason_category
from research_portal.capture.batching import frame_batcher
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.validation import ReportRefused, do_fail_unplayable_ad
from research_portal.capture.wire import MAX_TEXT_CHARS, MAX_WIRE_INT
from research_portal.studies.models import Ad
from tests.capture.test_capture_consumer import connect, frame, receive_until_closed
from tests.support.readings import new_viewer, reading

pytestmark = pytest.mark.django_db(transaction=True)

FAILED_REDIRECT = "https://panel.example/failed?id={pid}"


@pytest.fixture(autouse=True)
def embedded_backend(deployment_mode, settings):
    deployment_mode.embedded()
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.2


@pytest.fixture
def playlist(acme) -> list[Ad]:
    """The Spring campaign with three ads in a fixed order, sending failed sessions back to the panel."""
    acme.study.redirect_failed_url = FAILED_REDIRECT
    acme.study.save()
    extra = [
        Ad.objects.create(
            study=acme.study,
            title=title,
            video=acme.ad.video.name,
            duration_ms=acme.ad.duration_ms,
            position=n,
        )
        for n, title in ((1, "Summer ad"), (2, "Winter ad"))
    ]
    return [acme.ad, *extra]


def report(ad_id: object, error: object = "not_supported", media_time_ms: object = 0, **extra) -> str:
    return json.dumps(
        {"type": "ad_unplayable", "ad_id": ad_id, "error": error, "media_time_ms": media_time_ms, **extra}
    )


async def answer(communicator) -> dict:
    return json.loads(await communicator.receive_from(timeout=10))


@database_sync_to_async
def reload(session: ParticipantSession) -> ParticipantSession:
    return ParticipantSession.objects.get(pk=session.pk)


@database_sync_to_async
def events_of(session: ParticipantSession) -> list[tuple]:
    return list(
        SessionEvent.objects.filter(session=session).values_list("name", "ad_id", "media_time_ms", "detail")
    )


def store_frame(session: ParticipantSession, seq: int, ad: Ad | None) -> None:
    reading(session, ad, seq, 0, model="test", start=datetime.now(UTC)).save()


# ---- the report that holds ---------------------------------------------------------------------------------


async def test_a_report_of_the_current_ad_ends_the_session_failed_with_the_failed_redirect(acme, playlist):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    communicator, hello = await connect(session.token)
    assert hello["session"] == "viewing"
    await communicator.send_to(text_data=report(playlist[0].pk, "decode", 1200))
    messages, code = await receive_until_closed(communicator)

    assert messages == [{"type": "ended", "state": "failed", "reason": "ad_unplayable"}]
    assert code == 4003  # the session takes no more frames
    ended = await reload(session)
    assert ended.state == "failed" and ended.viewing_ended_at is not None
    assert ended.exclusion_reason == f"ad_unplayable: ad {playlist[0].pk} (decode): Spring ad"
    assert await events_of(session) == [("ad_unplayable", playlist[0].pk, 1200, "decode")]
    # The page then goes to the end page, which says why and sends the participant back with the Failed
    # redirect, as the outcome the end page polls says.
    client = Client()
    outcome = json.loads((await database_sync_to_async(client.get)(f"/p/{session.token}/outcome")).content)
    assert outcome == {"state": "failed", "ended": True, "next": "https://panel.example/failed?id=p-1"}
    end = (await database_sync_to_async(client.get)(f"/p/{session.token}/end/")).content.decode()
    assert "Your browser could not play the video, so the study ended early." in end
    assert 'content="5;url=https://panel.example/failed?id=p-1"' in end
    assert reason_category(ended.state, ended.exclusion_reason) == "ad_unplayable"  # the overview's group
    again, error = await connect(session.token)
    assert error["code"] == "session_closed" and (await receive_until_closed(again))[1] == 4003


async def test_the_current_ad_follows_the_newest_frame_stored_or_taken_by_the_socket(
    acme, playlist, face_jpegs, settings
):
    first, second, third = (ad.pk for ad in playlist)
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    communicator, _ = await connect(session.token)
    # Before any ad frame (only the baseline's): the first ad, nothing else.
    await communicator.send_to(bytes_data=frame(0, 0, face_jpegs[0]))
    for ad_id in (second, third):
        await communicator.send_to(text_data=report(ad_id))
        assert (await answer(communicator))["code"] == "wrong_ad"
    # Frames of the first ad that the socket took but that are not stored yet (held in the batcher) count:
    # the participant is at the first ad, or at the second one if it failed as it loaded.
    settings.CAPTURE_FLUSH_INTERVAL_S = 60
    for seq in (1, 2):
        await communicator.send_to(bytes_data=frame(seq, first, face_jpegs[seq]))
    await communicator.send_to(text_data=report(third))
    refused = await answer(communicator)
    assert refused["code"] == "wrong_ad" and refused["seq"] is None
    assert (
        await database_sync_to_async(FrameResult.objects.filter(session=session, ad_id=first).exists)()
        is False
    )
    assert (await reload(session)).state == "viewing"
    await communicator.send_to(text_data=report(second, "network", 0))
    messages, code = await receive_until_closed(communicator)
    assert messages[-1]["type"] == "ended" and code == 4003
    assert (await reload(session)).exclusion_reason == f"ad_unplayable: ad {second} (network): Summer ad"
    settings.CAPTURE_FLUSH_INTERVAL_S = 0.2  # the held frames leave (and are stored) before the test ends
    batcher = frame_batcher()
    batcher.wake.set()
    while batcher.frames or batcher.in_flight_since is not None:
        await asyncio.sleep(0.05)


def test_stored_frames_say_where_the_participant_is_after_a_reload(acme, playlist):
    """A reloaded page opens a new socket that took no frame yet: the stored ones tell."""
    first, second, third = playlist
    session = new_viewer(acme.study, "p-1", playlist)
    session.state = ParticipantSession.State.VIEWING
    session.save()
    store_frame(session, 0, None)
    store_frame(session, 1, second)
    with pytest.raises(ReportRefused) as refused:
        do_fail_unplayable_ad(session.pk, first.pk, "decode")
    assert refused.value.code == "wrong_ad"
    # A frame the socket took with a higher seq wins over the stored ones.
    with pytest.raises(ReportRefused):
        do_fail_unplayable_ad(session.pk, third.pk, "decode", taken=(2, first.pk))
    assert do_fail_unplayable_ad(session.pk, first.pk, "decode", taken=(2, first.pk)).state == "failed"


# ---- reports that do not hold ----------------------------------------------------------------------------


async def test_reports_of_ads_that_are_not_the_sessions_current_one_are_refused(acme, playlist):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    not_in_sequence = await database_sync_to_async(Ad.objects.create)(
        study=acme.study, title="Dropped ad", video=acme.ad.video.name, duration_ms=1000
    )
    communicator, _ = await connect(session.token)
    for ad_id in (acme.other_ad.pk, not_in_sequence.pk, 0, 987654321, MAX_WIRE_INT):
        await communicator.send_to(text_data=report(ad_id))
        refused = await answer(communicator)
        assert (refused["code"], refused["seq"]) == ("wrong_ad", None), ad_id
        assert f"Ad {ad_id} is not the ad this session is at." == refused["detail"]
    await communicator.send_to(text_data=json.dumps({"type": "finish"}))
    assert (await receive_until_closed(communicator))[1] == 1000  # the socket stayed open and well
    assert (await reload(session)).state == "viewing"
    assert await events_of(session) == []


async def test_a_report_after_viewing_finished_or_the_session_ended_is_refused(acme, playlist):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    communicator, _ = await connect(session.token)
    # The page posted `finish` in another tab: viewing is over, validation decides.
    finished_at = timezone.now()
    await database_sync_to_async(ParticipantSession.objects.filter(pk=session.pk).update)(
        viewing_ended_at=finished_at
    )
    await communicator.send_to(text_data=report(playlist[0].pk))
    refused = await answer(communicator)
    assert refused["code"] == "not_viewing" and "done viewing" in refused["detail"]
    # Validated meanwhile: the outcome stays as it was.
    await database_sync_to_async(ParticipantSession.objects.filter(pk=session.pk).update)(
        state="completed", exclusion_reason=""
    )
    await communicator.send_to(text_data=report(playlist[0].pk))
    refused = await answer(communicator)
    assert refused["code"] == "not_viewing" and refused["detail"].startswith("This session is completed")
    await communicator.disconnect()
    ended = await reload(session)
    assert (ended.state, ended.exclusion_reason, ended.viewing_ended_at) == ("completed", "", finished_at)
    assert await events_of(session) == []


@pytest.mark.parametrize("state", ["started", "consented", "completed", "failed", "declined", "over_quota"])
def test_only_a_viewing_session_can_end_for_an_unplayable_ad(acme, playlist, state):
    session = new_viewer(acme.study, "p-1", playlist)
    ParticipantSession.objects.filter(pk=session.pk).update(state=state, exclusion_reason="as it was")
    with pytest.raises(ReportRefused) as refused:
        do_fail_unplayable_ad(session.pk, playlist[0].pk, "decode")
    assert refused.value.code == "not_viewing"
    session.refresh_from_db()
    assert (session.state, session.exclusion_reason) == (state, "as it was")
    assert not SessionEvent.objects.filter(session=session).exists()


def test_a_repeated_report_finds_the_session_ended_even_when_both_arrive_at_once(acme, playlist):
    """Two tabs (or a resent report) at the same moment take turns on the session's row lock: one ends
    the session, the other is refused, and there is one event."""
    session = new_viewer(acme.study, "p-1", playlist)
    ParticipantSession.objects.filter(pk=session.pk).update(state="viewing")
    start = threading.Barrier(2)
    results: list[str] = []

    def send_report(error: str) -> None:
        start.wait()
        try:
            do_fail_unplayable_ad(session.pk, playlist[0].pk, error)
            results.append("ended")
        except ReportRefused as refused:
            results.append(refused.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send_report, args=(error,)) for error in ("decode", "network")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == ["ended", "not_viewing"]
    session.refresh_from_db()
    assert session.state == "failed" and session.exclusion_reason.startswith("ad_unplayable: ")
    assert SessionEvent.objects.filter(session=session, name="ad_unplayable").count() == 1
    with pytest.raises(ReportRefused):
        do_fail_unplayable_ad(session.pk, playlist[0].pk, "decode")  # and any later report
    assert SessionEvent.objects.filter(session=session).count() == 1


def hostile_reports(ad: int) -> list[str]:
    """Reports that are not what capture.js sends, around the session's own current ad."""
    reports = [{"type": "ad_unplayable"}, {"type": "ad_unplayable", "error": "decode"}]
    for bad_ad in (
        str(ad),
        f"{ad} OR 1=1",
        None,
        True,
        -1,
        1.5,
        float("nan"),
        MAX_WIRE_INT + 1,
        2**64,
        10**300,
    ):
        reports.append({"type": "ad_unplayable", "ad_id": bad_ad, "error": "decode"})
    reports += [
        {"type": "ad_unplayable", "ad_id": [ad], "error": "decode"},
        {"type": "ad_unplayable", "ad_id": {"id": ad}, "error": "decode"},
        {"type": "ad_unplayable", "ad_id": ad},
    ]
    for bad_error in (
        None,
        "",
        "DECODE",
        "decode\u0000",
        "<script>alert(1)</script>",
        "x" * 900,
        3,
        ["decode"],
    ):
        reports.append({"type": "ad_unplayable", "ad_id": ad, "error": bad_error})
    for bad_time in (-5, "1200", 2**40, float("inf"), False, 1.5):
        reports.append({"type": "ad_unplayable", "ad_id": ad, "error": "decode", "media_time_ms": bad_time})
    return [json.dumps(report) for report in reports]


async def test_hostile_reports_get_a_clear_error_and_change_nothing(acme, playlist, caplog):
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    communicator, _ = await connect(session.token)
    caplog.set_level(logging.INFO)
    for text in hostile_reports(playlist[0].pk):
        await communicator.send_to(text_data=text)
        refused = await answer(communicator)
        assert (refused["type"], refused["code"], refused["seq"]) == ("error", "bad_report", None), text
        assert refused["detail"].startswith("An ad_unplayable report is {")
    # Too long or too deep to parse, as every text message.
    for text in (
        report(playlist[0].pk, pad="x" * MAX_TEXT_CHARS),
        '{"type": "ad_unplayable", "ad_id": [[[1]]]}',
    ):
        await communicator.send_to(text_data=text)
        assert (await answer(communicator))["code"] == "bad_message"
    assert (await reload(session)).state == "viewing"
    assert await events_of(session) == []
    # Still listening: the real report still works.
    await communicator.send_to(text_data=report(playlist[0].pk, "not_supported", None))
    messages, code = await receive_until_closed(communicator)
    assert messages[-1]["type"] == "ended" and code == 4003
    assert await events_of(session) == [("ad_unplayable", playlist[0].pk, None, "not_supported")]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_reports_beyond_the_event_limit_are_rate_limited_and_a_flood_is_closed(
    acme, playlist, settings
):
    settings.CAPTURE_EVENT_BURST = 5
    session = await database_sync_to_async(new_viewer)(acme.study, "p-1", playlist)
    communicator, _ = await connect(session.token)
    for _ in range(8):
        await communicator.send_to(text_data=report(playlist[2].pk))  # never the current ad
    codes = [(await answer(communicator))["code"] for _ in range(8)]
    # Each report within the limit costs a transaction under the session's row lock; beyond it, none.
    assert codes[:5] == ["wrong_ad"] * 5 and codes.count("rate_limited") >= 2
    for _ in range(60):
        await communicator.send_to(text_data=report("x"))
    messages, code = await receive_until_closed(communicator, timeout=20)
    assert code == 4008 and {message["code"] for message in messages} == {"bad_report"}
    assert (await reload(session)).state == "viewing"
    assert await events_of(session) == []
