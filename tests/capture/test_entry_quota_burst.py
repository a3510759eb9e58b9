"""Quotas hold at the edge, also in a launch burst.

Real threads, each with its own Postgres connection, enter (or finish) at the same moment. An entry holds a
seat of its country's quota for `quota_seat_minutes` (or until it ends); validation re-checks the seat, so a
complete past the target is Over quota whatever happened before. Refused entries are sessions in state
over_quota, which the study overview counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from research_portal.analytics.dashboard import build_study_overview
from research_portal.analytics.services import Filters
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.validation import do_validate_due_sessions, do_validate_session
from research_portal.studies.models import CountryQuota, Study
from tests.support.polling import eventually
from tests.support.readings import reading

PARALLEL = 10


def at_once(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(0..count-1) in `count` threads released together; each thread closes its DB connection."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


def wait_for_lock_waiters(count: int, timeout_s: float = 30) -> None:
    """Until `count` other connections of this test database wait on a lock (asked on this connection,
    which may be inside a transaction: the activity snapshot is refreshed each time)."""
    with connection.cursor() as cursor:

        def waiting() -> int:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

        queued = eventually(waiting, until=lambda n: n >= count, timeout_s=timeout_s, interval_s=0.05)
    assert queued >= count, f"only {queued} of {count} connections queued on a lock"


def in_threads(count: int, work: Callable[[int], object]) -> Callable[[], list[object]]:
    """Start work(0..count-1) in threads now; the returned function joins them and gives the results."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as error:  # reported when joined, in the test's thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()

    def join() -> list[object]:
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        return results

    return join


def enter(study: Study, pid: str, country: str = "DE"):
    return Client().get(f"/s/{study.public_id}/", {"pid": pid, "c": country}, HTTP_ACCEPT_LANGUAGE="en")


def overview_total(study: Study) -> dict:
    return build_study_overview(study, Filters())["total"]


@pytest.fixture
def panel_study(acme) -> Study:
    study = acme.study
    study.redirect_over_quota_url = "https://panel.example/full?id={pid}"
    study.redirect_complete_url = "https://panel.example/done?id={pid}"
    study.save()
    CountryQuota.objects.create(study=study, country="DE", target=3)
    return study


def test_a_burst_of_entries_at_the_edge_admits_exactly_the_quota(postgres, panel_study):
    responses = at_once(PARALLEL, lambda index: enter(panel_study, f"burst-{index}"))
    admitted = [r for r in responses if r.status_code == 302]
    refused = [r for r in responses if r.status_code == 403]
    assert len(admitted) == 3 and len(refused) == PARALLEL - 3
    assert all(r.url.endswith("/consent/") for r in admitted)
    for response in refused:  # in German (c=DE), with the panel's Over-quota redirect
        assert "Diese Studie ist bereits voll" in response.content.decode()
        assert b"https://panel.example/full?id=burst-" in response.content
    sessions = ParticipantSession.objects.filter(study=panel_study)
    assert sessions.filter(state="started").count() == 3
    assert sessions.filter(state="over_quota").count() == PARALLEL - 3
    # The study overview's Over-quota column counts the refused entries.
    total = overview_total(panel_study)
    assert total["over_quota"] == PARALLEL - 3 and total["in_progress"] == 3
    assert total["started"] == 3  # refused at the door: counted as over quota, never as started
    de = next(row for row in build_study_overview(panel_study, Filters())["funnel"] if row["country"] == "DE")
    assert de["over_quota"] == PARALLEL - 3


def test_a_quota_of_another_country_or_none_is_not_touched_by_the_burst(postgres, panel_study):
    responses = at_once(PARALLEL, lambda index: enter(panel_study, f"us-{index}", "US"))
    assert [r.status_code for r in responses] == [302] * PARALLEL


def viewed_session(study: Study, pid: str, usable: bool = True, **fields) -> ParticipantSession:
    """Viewing ended a minute ago with every frame of the 4 s ad stored (usable or not)."""
    now = timezone.now()
    created_at = fields.pop("created_at", now)
    values = {
        "country": "DE",
        "state": "viewing",
        "ad_sequence": list(study.ads.values_list("id", flat=True)),
        "consent_at": now,
        "checks_passed_at": now,
        "viewing_ended_at": now - timedelta(minutes=1),
        **fields,
    }
    session = ParticipantSession.objects.create(study=study, external_participant_id=pid, **values)
    ParticipantSession.objects.filter(pk=session.pk).update(created_at=created_at)
    ad = study.ads.get()
    FrameResult.objects.bulk_create(
        reading(session, ad, seq, seq * 200, face=usable, model="test", start=now) for seq in range(20)
    )
    return session


def test_completes_at_the_same_moment_past_the_target_are_over_quota(postgres, panel_study):
    """A study that holds no seats (quota_seat_minutes 0) lets everyone in; validation decides."""
    panel_study.quota_seat_minutes = 0
    panel_study.save()
    sessions = [viewed_session(panel_study, f"done-{index}") for index in range(PARALLEL)]
    at_once(PARALLEL, lambda index: do_validate_session(sessions[index]))
    states = sorted(ParticipantSession.objects.values_list("state", flat=True))
    assert states == ["completed"] * 3 + ["over_quota"] * (PARALLEL - 3)
    late = ParticipantSession.objects.filter(state="over_quota").first()
    assert late.exclusion_reason.startswith("quota full")
    page = Client().get(f"/p/{late.token}/end/")
    assert b"This study is full" in page.content
    assert f"https://panel.example/full?id={late.external_participant_id}".encode() in page.content
    assert overview_total(panel_study)["over_quota"] == PARALLEL - 3
    assert overview_total(panel_study)["validated"] == 3
    assert overview_total(panel_study)["started"] == PARALLEL  # refused after viewing: they did start


def test_validations_queue_on_the_quota_row_and_each_sees_the_completes_before_it(postgres, panel_study):
    """Deterministic: the quota row is held while every validation reaches it; released, they take turns."""
    panel_study.quota_seat_minutes = 0
    panel_study.save()
    sessions = [viewed_session(panel_study, f"q-{index}") for index in range(PARALLEL)]
    with transaction.atomic():
        CountryQuota.objects.select_for_update().get(study=panel_study, country="DE")
        join = in_threads(PARALLEL, lambda index: do_validate_session(sessions[index]))
        wait_for_lock_waiters(PARALLEL)
    join()
    states = sorted(ParticipantSession.objects.values_list("state", flat=True))
    assert states == ["completed"] * 3 + ["over_quota"] * (PARALLEL - 3)


def test_entries_queue_on_the_quota_row_too(postgres, panel_study):
    with transaction.atomic():
        CountryQuota.objects.select_for_update().get(study=panel_study, country="DE")
        join = in_threads(PARALLEL, lambda index: enter(panel_study, f"e-{index}").status_code)
        wait_for_lock_waiters(PARALLEL)
    assert sorted(join()) == [302] * 3 + [403] * (PARALLEL - 3)


def test_without_seats_entries_are_admitted_until_the_completes_reach_the_target(postgres, panel_study):
    panel_study.quota_seat_minutes = 0
    panel_study.save()
    responses = at_once(PARALLEL, lambda index: enter(panel_study, f"p-{index}"))
    assert [response.status_code for response in responses] == [302] * PARALLEL
    ParticipantSession.objects.filter(external_participant_id__in=["p-0", "p-1", "p-2"]).update(
        state="completed"
    )
    assert enter(panel_study, "late").status_code == 403


@pytest.mark.django_db
def test_failed_and_declined_sessions_give_their_seat_back(panel_study):
    for index in range(3):
        assert enter(panel_study, f"p-{index}").status_code == 302
    assert enter(panel_study, "waiting").status_code == 403
    ParticipantSession.objects.filter(external_participant_id="p-0").update(state="declined")
    ParticipantSession.objects.filter(external_participant_id="p-1").update(state="failed")
    assert enter(panel_study, "next-1").status_code == 302
    assert enter(panel_study, "next-2").status_code == 302
    assert enter(panel_study, "next-3").status_code == 403


@pytest.mark.django_db
def test_a_seat_expires_and_then_the_quota_holds_at_validation(panel_study):
    """A participant who takes longer than the seat lasts may lose it to a newcomer: then the quota is
    already full when they finish, and they are over quota, not a fourth complete."""
    panel_study.quota_seat_minutes = 30
    panel_study.save()
    slow = viewed_session(panel_study, "slow", created_at=timezone.now() - timedelta(minutes=31))
    for index in range(3):
        assert enter(panel_study, f"p-{index}").status_code == 302  # the slow one's seat expired
    assert enter(panel_study, "p-3").status_code == 403
    do_validate_due_sessions()
    slow.refresh_from_db()
    assert slow.state == "over_quota" and "quota full" in slow.exclusion_reason
    # Within its seat a session completes even though the quota is fully booked.
    on_time = ParticipantSession.objects.get(external_participant_id="p-0")
    on_time.delete()
    in_seat = viewed_session(panel_study, "in-seat")
    do_validate_due_sessions()
    in_seat.refresh_from_db()
    assert in_seat.state == "completed"


@pytest.mark.django_db
def test_a_session_with_too_few_frames_fails_and_never_takes_a_complete(panel_study):
    panel_study.quota_seat_minutes = 0
    panel_study.save()
    for index in range(3):
        viewed_session(panel_study, f"ok-{index}", state="completed")
    bad = viewed_session(panel_study, "bad", usable=False)
    do_validate_due_sessions()
    bad.refresh_from_db()
    assert bad.state == "failed"


@pytest.mark.django_db
def test_previews_never_take_seats_nor_become_over_quota(panel_study):
    from research_portal.capture.participation import do_start_preview

    CountryQuota.objects.filter(study=panel_study).update(target=1)
    preview = do_start_preview(panel_study, "en", "DE")
    assert enter(panel_study, "real").status_code == 302
    ParticipantSession.objects.filter(external_participant_id="real").update(state="completed")
    preview_viewed = viewed_session(panel_study, "preview-x", is_preview=True)
    do_validate_due_sessions()
    preview_viewed.refresh_from_db()
    assert preview_viewed.state == "completed" and preview.state == "started"
    assert ParticipantSession.objects.filter(is_preview=False, state="completed").count() == 1


def test_quota_seat_minutes_is_a_study_setting_with_a_default(acme):
    assert Study._meta.get_field("quota_seat_minutes").default == 30
