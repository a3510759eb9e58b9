"""The live view's provisional figures (analytics/provisional.py): who is watching an ad now and what their
frames stored in the last seconds show, in both deployment modes, pushed to an open dashboard socket within
seconds of the frames being stored, without waiting for the rollups' interval."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from django.db import connections

from research_portal.analytics import provisional
from research_portal.analytics.live import GroupThrottle, LocalWindows
from research_portal.analytics.provisional import (
    BUCKET_S,
    WINDOW_S,
    do_record_live,
    live_snapshot,
    tally_rows,
)
from tests.analytics.test_live import open_socket
from tests.support.readings import FrameWriter, new_participant, reading

NOW = 1_800_000_000.0  # a wall-clock time on a bucket boundary


def hand_rows(acme):
    """Two participants of the ad, and one baseline frame that is not part of the ad's view:

    P1 second 0: smile 0.2 (valence -0.6), 0.4 (-0.2); second 1: no face
    P2 second 0: smile 0.9 with no valence;            second 1: 0.6 (0.2), an undecodable frame
    """
    p1, p2 = new_participant(acme.study, "DE"), new_participant(acme.study, "US")
    undecodable = reading(p2, acme.ad, 4, 1_700, face=False)
    undecodable.error = "not a JPEG"
    rows = [
        reading(p1, acme.ad, 0, 100, 0.2),
        reading(p1, acme.ad, 1, 300, 0.4),
        reading(p1, acme.ad, 2, 1_100, face=False),
        reading(p2, acme.ad, 0, 500, 0.9, valence=None),
        reading(p2, acme.ad, 1, 1_500, 0.6),
        undecodable,
        reading(p2, None, 5, 0, 0.1),  # baseline screen
    ]
    return rows, (p1, p2)


@pytest.mark.django_db
def test_a_batch_is_tallied_per_ad_and_second(acme):
    rows, (p1, p2) = hand_rows(acme)
    (tally,) = tally_rows(rows)
    assert tally.ad_id == acme.ad.pk and tally.seconds.tolist() == [0, 1]
    # frames with a reading, their smile sum, frames with valence, their valence sum
    assert tally.sums.ravel().tolist() == pytest.approx([3, 1.5, 2, -0.8, 1, 0.6, 1, 0.2])
    assert tally.sessions == {p1.pk, p2.pk}
    assert tally_rows([rows[-1]]) == []  # the baseline alone shows on no ad's view


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["embedded", "production"])
def test_the_snapshot_shows_who_is_watching_and_their_frame_means(acme, deployment_mode, redis_url, mode):
    if mode == "embedded":
        deployment_mode.embedded()
    else:
        deployment_mode.production(redis_url)
    # Another test's frames at the same wall-clock time must not mix in: an ad of its own here.
    rows, _ = hand_rows(acme)
    assert do_record_live(rows[:3], now=NOW) == [acme.ad.pk]  # P1's batch
    assert do_record_live(rows[3:], now=NOW + BUCKET_S) == [acme.ad.pk]  # P2's, a bucket later

    snapshot = live_snapshot(acme.ad.pk, now=NOW + BUCKET_S)
    assert snapshot.watching == 2 and snapshot.seconds == [0, 1] and snapshot.frames == [3, 1]
    assert snapshot.smile == pytest.approx([0.5, 0.6])  # (0.2 + 0.4 + 0.9) / 3; 0.6
    assert snapshot.valence == pytest.approx([-0.4, 0.2])  # (-0.6 - 0.2) / 2: P2's frame had none
    assert snapshot.to_json()["window_s"] == WINDOW_S

    # Out of the window, P1's bucket is gone: P2 alone is watching.
    later = live_snapshot(acme.ad.pk, now=NOW + WINDOW_S + BUCKET_S)
    assert later.watching == 1 and later.frames == [1, 1] and later.smile == pytest.approx([0.9, 0.6])
    gone = live_snapshot(acme.ad.pk, now=NOW + 3 * WINDOW_S)
    assert gone.watching == 0 and gone.seconds == [] and gone.smile == []


def test_live_pushes_throttle_apart_from_the_rollups_pushes(settings):
    """A live push and a rollup push to the same group inside one interval: both arrive (each kind has its
    own window), so the provisional figures never swallow the exact dashboard's update."""
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.3
    sent: list[tuple[str, str]] = []
    windows = LocalWindows()
    throttle = GroupThrottle(
        send=lambda group, message: sent.append((group, message["type"])), store=lambda: windows
    )
    for _ in range(5):
        throttle.submit("analytics-ad-1", {"type": "analytics.changed"})
        throttle.submit("analytics-ad-1", {"type": "analytics.live"}, window="analytics-ad-1:live")
    time.sleep(0.6)
    kinds = [kind for _group, kind in sent]
    assert kinds.count("analytics.changed") == 2 and kinds.count("analytics.live") == 2  # leading + trailing


@pytest.mark.django_db(transaction=True)
async def test_an_open_dashboard_gets_the_viewers_frames_within_seconds(
    acme, analysts, deployment_mode, redis_url
):
    """Production mode, the Redis channel layer: a participant's frames, stored second by second mid-ad,
    reach the analyst's socket as provisional figures within 5 s of being stored (the push does not wait for
    the rollups, which production refreshes per session every 30 s)."""
    deployment_mode.production(redis_url)
    try:
        socket = await open_socket(analysts.acme, f"/ws/analytics/ads/{acme.ad.pk}/")
        assert (await socket.receive_json_from())["type"] == "hello"
        writer = FrameWriter(await database_sync_to_async(new_participant)(acme.study, "DE"))
        lives = []
        for second, smile in enumerate([0.2, 0.8, 0.5]):
            stored_at = time.monotonic()
            await database_sync_to_async(writer.store)(acme.ad, second, [smile, smile])
            while True:
                message = await socket.receive_json_from(timeout=5)
                if message["type"] == "live" and second in message["data"]["seconds"]:
                    break
            assert time.monotonic() - stored_at < 5
            lives.append(message["data"])
            await asyncio.sleep(1.1)  # past the live throttle's interval
        last = lives[-1]
        assert last["ad"] == acme.ad.pk and last["watching"] == 1
        assert last["seconds"] == [0, 1, 2] and last["smile"] == pytest.approx([0.2, 0.8, 0.5])
        await socket.disconnect()
    finally:
        await database_sync_to_async(connections.close_all)()


def test_a_failing_tally_never_fails_the_store(acme, db, monkeypatch, django_capture_on_commit_callbacks):
    """The rows are stored and acked when the tally runs: its failure is logged, nothing is raised."""

    def broken(*_args, **_kwargs):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(provisional, "do_record_live", broken)
    writer = FrameWriter(new_participant(acme.study, "DE"))
    with django_capture_on_commit_callbacks(execute=True):
        writer.store(acme.ad, 0, [0.4])
