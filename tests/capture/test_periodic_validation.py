"""Validation is periodic work, never a page's: a finished session is validated within a bound (settings:
SESSION_VALIDATION_INTERVAL_S after its readings are in, MAX_VALIDATION_WAIT at most for them) whether or not
its end page is still open, by Celery beat in production and by the web process's own thread in embedded
mode (research_portal/ops/periodic.py). Nothing polls /outcome here."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from research_portal import deployment
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.participation import validated_completes
from research_portal.capture.validation import MAX_VALIDATION_WAIT, STORE_GRACE
from research_portal.ops import periodic
from research_portal.studies.models import CountryQuota
from tests.support.polling import eventually
from tests.support.readings import reading
from tests.support.services import service_env, start_celery_worker

# What the issue promises: every finished session is validated within a minute of its viewing's end.
VALIDATION_BOUND_S = 60
STORE_GRACE_S = STORE_GRACE.total_seconds()


def finished_viewer(study, pid: str, country: str = "DE") -> ParticipantSession:
    """A participant who watched the 4 s ad to its end a moment ago (every frame stored) and closed the tab:
    nothing will ever ask for this session's outcome."""
    now = timezone.now()
    ad = study.ads.get()
    session = ParticipantSession.objects.create(
        study=study,
        country=country,
        external_participant_id=pid,
        state="viewing",
        ad_sequence=[ad.pk],
        consent_at=now,
        checks_passed_at=now - timedelta(seconds=10),
        viewing_ended_at=now,
        last_enqueued_seq=19,
        last_enqueued_at=now,
    )
    FrameResult.objects.bulk_create(
        reading(session, ad, seq, seq * 200, model="test", start=now) for seq in range(20)
    )
    return session


def wait_until_ended(session: ParticipantSession, timeout_s: float) -> tuple[ParticipantSession, float]:
    """Watch the database (not the participant's /outcome) until the session has ended; (session, seconds)."""
    started = time.monotonic()

    def has_ended() -> bool:
        session.refresh_from_db()
        return session.has_ended

    eventually(has_ended, timeout_s=timeout_s)
    return session, time.monotonic() - started


def test_the_shipped_schedule_keeps_the_bound():
    interval = settings.CELERY_BEAT_SCHEDULE["validate-sessions"]["schedule"]
    assert interval == settings.SESSION_VALIDATION_INTERVAL_S
    assert MAX_VALIDATION_WAIT.total_seconds() + interval <= VALIDATION_BOUND_S
    jobs = {"apply-retention", "validate-sessions", "reconcile-rollups"}
    assert set(settings.EMBEDDED_PERIODIC_JOBS) == jobs


# ---- embedded mode: a thread of the web process ------------------------------------------------------------


@pytest.fixture
def embedded_mode() -> Iterator[None]:
    deployment.switch_to(deployment.Deployment(deployment.Mode.EMBEDDED))
    yield
    periodic.stop_embedded_loop()
    deployment.switch_to(None)


@pytest.fixture
def embedded_loop(postgres, embedded_mode) -> Iterator[periodic.PeriodicLoop]:
    """The shipped embedded loop (the schedule's jobs and intervals) in this process, stopped afterwards."""
    loop = periodic.start_embedded_loop()
    yield loop
    assert loop.stop() and not loop.running


def test_the_embedded_loop_applies_retention_without_cron(acme, postgres, embedded_mode):
    """Retention is one of the loop's jobs: a preview session past its day goes, with nothing else run."""
    old_preview = ParticipantSession.objects.create(
        study=acme.study, external_participant_id="preview-old", is_preview=True, ad_sequence=[acme.ad.pk]
    )
    ParticipantSession.objects.filter(pk=old_preview.pk).update(created_at=timezone.now() - timedelta(days=2))
    fresh_preview = ParticipantSession.objects.create(
        study=acme.study, external_participant_id="preview-new", is_preview=True, ad_sequence=[acme.ad.pk]
    )
    loop = periodic.start_embedded_loop()
    try:
        old = ParticipantSession.objects.filter(pk=old_preview.pk)
        gone = eventually(lambda: not old.exists(), timeout_s=10)
    finally:
        assert loop.stop()
    assert gone and ParticipantSession.objects.filter(pk=fresh_preview.pk).exists()


def test_the_embedded_loop_validates_a_finished_session_nobody_polls(acme, embedded_loop):
    assert [job.name for job in embedded_loop.jobs] == list(settings.EMBEDDED_PERIODIC_JOBS)
    time.sleep(0.5)  # its first run is over: the session below waits for the next one
    session, waited_s = wait_until_ended(finished_viewer(acme.study, "closed-tab"), VALIDATION_BOUND_S)
    assert session.state == "completed"
    assert waited_s <= settings.SESSION_VALIDATION_INTERVAL_S + STORE_GRACE_S + 2, waited_s
    print(f"embedded loop: validated {waited_s:.1f} s after viewing ended")


def test_a_session_validated_by_the_loop_counts_toward_the_quota(acme, embedded_loop):
    acme.study.quota_seat_minutes = 0  # only validated completes take the quota
    acme.study.save()
    CountryQuota.objects.create(study=acme.study, country="DE", target=1)
    session, _ = wait_until_ended(finished_viewer(acme.study, "first"), VALIDATION_BOUND_S)
    assert session.state == "completed" and validated_completes(acme.study, "DE") == 1
    refused = Client().get(f"/s/{acme.study.public_id}/", {"pid": "second", "c": "DE"})
    assert refused.status_code == 403  # the quota is full: "This study is full", in German for DE
    assert ParticipantSession.objects.get(external_participant_id="second").state == "over_quota"


def test_the_loop_starts_with_the_first_request_once_per_process(postgres, embedded_mode, settings):
    def loop_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "periodic-work"]

    client = Client()
    assert client.get("/healthz").status_code == 200
    assert loop_threads() == []  # tests switch it off (tests/conftest.py)
    settings.EMBEDDED_PERIODIC_LOOP = True
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert len(loop_threads()) == 1
    periodic.stop_embedded_loop()
    assert loop_threads() == []  # stopped and joined


def test_production_mode_leaves_periodic_work_to_beat(postgres, settings):
    deployment.switch_to(deployment.Deployment(deployment.Mode.PRODUCTION, "redis://127.0.0.1:1/0"))
    try:
        settings.EMBEDDED_PERIODIC_LOOP = True
        assert Client().get("/healthz").status_code == 200
        assert not [thread for thread in threading.enumerate() if thread.name == "periodic-work"]
    finally:
        deployment.switch_to(None)


def test_a_failing_job_is_logged_and_runs_again(caplog):
    runs: list[float] = []

    def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("database away")

    loop = periodic.PeriodicLoop([periodic.PeriodicJob("flaky", flaky, 0.2)])
    loop.start()
    deadline = time.monotonic() + 10
    while len(runs) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop.stop()
    assert len(runs) >= 3 and "periodic job flaky failed" in caplog.text
    assert all(later - earlier >= 0.19 for earlier, later in zip(runs, runs[1:], strict=False))


# ---- production: Celery beat -------------------------------------------------------------------------------


def test_a_worker_with_beat_validates_a_finished_session_nobody_polls(acme, postgres, redis_url, tmp_path):
    acme.study.quota_seat_minutes = 0
    acme.study.save()
    CountryQuota.objects.create(study=acme.study, country="DE", target=1)
    worker = start_celery_worker(service_env(postgres, redis_url), tmp_path / "worker.log", beat=True)
    try:
        session, waited_s = wait_until_ended(finished_viewer(acme.study, "closed-tab"), VALIDATION_BOUND_S)
        log = worker.log()
    finally:
        worker.stop()
    assert session.state == "completed", log[-3000:]
    assert "validate_due_sessions_task" in log  # beat sent it, the worker ran it
    # The first beat run comes one interval after beat starts; then within an interval of the session's end.
    assert waited_s <= 2 * settings.SESSION_VALIDATION_INTERVAL_S + STORE_GRACE_S + 2, waited_s
    assert validated_completes(acme.study, "DE") == 1
    refused = Client().get(f"/s/{acme.study.public_id}/", {"pid": "second", "c": "DE"})
    assert refused.status_code == 403
    assert ParticipantSession.objects.get(external_participant_id="second").state == "over_quota"
    print(f"celery beat: validated {waited_s:.1f} s after viewing ended")
