"""Participant data rights: deleting one participant (by panel id) or a whole study removes every reading,
event, stored frame and the participant's share of the aggregates; retention purges raw per-frame rows and
stored frames but keeps the anonymous aggregates; every deletion and export is in the audit log."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone

from research_portal.accounts.models import Role
from research_portal.analytics.models import SecondCell, SecondRollup, SessionRollup
from research_portal.capture.erasure import (
    do_apply_retention,
    do_delete_participant,
    panel_id_fingerprint,
)
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.storage import store_frame_images, stored_frames_dir
from research_portal.capture.tasks import apply_retention_task
from research_portal.capture.wire import QueuedFrame
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, Study
from tests.support.people import member
from tests.support.readings import session_with_frames

pytestmark = pytest.mark.django_db


def participants_in_cells(ad) -> int:
    return SecondCell.objects.filter(ad=ad, level=0, second=0).aggregate(n=Sum("participants"))["n"] or 0


def keep_frames(session) -> Path:
    store_frame_images([QueuedFrame(session.pk, 0, 0, 0, 0.0, b"\xff\xd8\xff fake")])
    return stored_frames_dir(session.pk)


def test_deleting_a_participant_removes_all_their_data(client, acme, django_capture_on_commit_callbacks):
    alice = session_with_frames(acme.study, "alice", acme.ad)
    alice_again = session_with_frames(acme.study, "alice", acme.ad, country="US")  # e.g. a second entry
    bob = session_with_frames(acme.study, "bob", acme.ad)
    other_study_alice = session_with_frames(acme.other_study, "alice", acme.other_ad)
    folder = keep_frames(alice)
    assert participants_in_cells(acme.ad) == 3

    admin = member(acme.organization, Role.ADMIN, "ada")
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/studies/{acme.study.pk}/delete-participant/", {"panel_id": " alice "})
    assert response.status_code == 302
    assert not ParticipantSession.objects.filter(pk__in=[alice.pk, alice_again.pk]).exists()
    assert not FrameResult.objects.filter(session_id__in=[alice.pk, alice_again.pk]).exists()
    assert not SessionEvent.objects.filter(session_id__in=[alice.pk, alice_again.pk]).exists()
    assert not SecondRollup.objects.filter(session_id__in=[alice.pk, alice_again.pk]).exists()
    assert not SessionRollup.objects.filter(session_id__in=[alice.pk, alice_again.pk]).exists()
    assert not folder.exists()
    # The anonymous sums no longer include her; bob and the other study are untouched.
    assert participants_in_cells(acme.ad) == 1
    assert FrameResult.objects.filter(session=bob).count() == 10
    assert FrameResult.objects.filter(session=other_study_alice).count() == 10

    entry = AuditLog.objects.get(action=AuditLog.Action.DELETE_PARTICIPANT)
    assert (entry.actor, entry.study, entry.organization) == (admin, acme.study, acme.organization)
    assert entry.detail == {
        "sessions": 2,
        "frame_results": 20,
        "events": 2,
        "panel_id_sha256": panel_id_fingerprint("alice"),
    }
    assert "alice" not in str(entry.detail)  # the log proves the deletion without keeping the identifier


def test_deleting_an_unknown_participant_deletes_nothing_but_is_logged(acme):
    session_with_frames(acme.study, "bob", acme.ad)
    deleted = do_delete_participant(acme.study, "nobody", None)
    assert deleted.sessions == 0 and FrameResult.objects.count() == 10
    assert AuditLog.objects.get().detail["sessions"] == 0


def test_deleting_a_study_removes_everything_and_needs_its_name(
    client, acme, django_capture_on_commit_callbacks
):
    sessions = [session_with_frames(acme.study, f"p{i}", acme.ad) for i in range(3)]
    folder = keep_frames(sessions[0])
    video_path = Path(acme.ad.video.path)
    admin = member(acme.organization, Role.ADMIN, "ada")
    client.force_login(admin)

    response = client.post(f"/studies/{acme.study.pk}/delete/", {"confirm_name": "Spring"})
    assert response.status_code == 400
    assert response.context["delete_study_form"].errors["confirm_name"] == [
        "The name does not match; nothing was deleted."
    ]
    assert Study.objects.filter(pk=acme.study.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/studies/{acme.study.pk}/delete/", {"confirm_name": "Spring campaign"})
    assert response.status_code == 302 and response["Location"] == "/studies/"
    assert not Study.objects.filter(pk=acme.study.pk).exists()
    assert not ParticipantSession.objects.filter(study_id=acme.study.pk).exists()
    assert not FrameResult.objects.filter(session_id__in=[s.pk for s in sessions]).exists()
    assert not Ad.objects.filter(pk=acme.ad.pk).exists()
    assert not SecondCell.objects.filter(ad_id=acme.ad.pk).exists()
    assert not folder.exists() and not video_path.exists()
    assert Study.objects.filter(pk=acme.other_study.pk).exists()  # the organisation's other study stays

    entry = AuditLog.objects.get(action=AuditLog.Action.DELETE_STUDY)
    assert entry.study is None and entry.study_name == "Spring campaign" and entry.actor_name == "ada"
    assert entry.detail["sessions"] == 3 and entry.detail["frame_results"] == 30 and entry.detail["ads"] == 1


def test_retention_purges_raw_frames_and_stored_frames_but_keeps_aggregates(
    acme, django_capture_on_commit_callbacks
):
    acme.study.retention_days = 30
    acme.study.frame_retention_days = 7
    acme.study.store_frames = True
    acme.study.save()
    old = session_with_frames(acme.study, "old", acme.ad)
    middle = session_with_frames(acme.study, "middle", acme.ad)
    recent = session_with_frames(acme.study, "recent", acme.ad)
    ParticipantSession.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    ParticipantSession.objects.filter(pk=middle.pk).update(created_at=timezone.now() - timedelta(days=8))
    folders = {session.pk: keep_frames(session) for session in (old, middle, recent)}
    preview = session_with_frames(acme.study, "preview-1", acme.ad, is_preview=True)
    ParticipantSession.objects.filter(pk=preview.pk).update(created_at=timezone.now() - timedelta(days=2))
    cells_before = participants_in_cells(acme.ad)

    with django_capture_on_commit_callbacks(execute=True):
        result = apply_retention_task()  # what Celery beat runs
    assert result == {"frame_results": 10, "frame_folders": 2, "preview_sessions": 1}
    assert not FrameResult.objects.filter(session=old).exists()
    assert FrameResult.objects.filter(session=middle).count() == 10
    assert FrameResult.objects.filter(session=recent).count() == 10
    assert not folders[old.pk].exists() and not folders[middle.pk].exists() and folders[recent.pk].exists()
    assert not ParticipantSession.objects.filter(pk=preview.pk).exists()
    # The session (for quotas) and the anonymous per-second aggregates stay.
    assert ParticipantSession.objects.filter(pk=old.pk).exists()
    assert SecondRollup.objects.filter(session=old).exists()
    assert participants_in_cells(acme.ad) == cells_before == 3  # previews were never in them

    entry = AuditLog.objects.get(action=AuditLog.Action.RETENTION_PURGE)
    assert entry.actor is None and entry.actor_name == "system" and entry.detail["frame_results"] == 10
    # Idempotent: nothing more to purge, nothing logged.
    assert do_apply_retention().frame_results == 0
    assert AuditLog.objects.filter(action=AuditLog.Action.RETENTION_PURGE).count() == 1


def test_retention_runs_from_beat_and_from_a_management_command(settings, acme, capsys):
    schedule = settings.CELERY_BEAT_SCHEDULE["apply-retention"]
    assert schedule["task"] == "research_portal.capture.tasks.apply_retention_task"
    assert schedule["schedule"] <= 24 * 3600
    old = session_with_frames(acme.study, "old", acme.ad)
    ParticipantSession.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=400))
    call_command("apply_retention")
    assert "Deleted 10 frame readings" in capsys.readouterr().out
    assert not FrameResult.objects.filter(session=old).exists()


def test_new_studies_are_private_by_default():
    study = Study()
    assert study.store_frames is False
    assert 0 < study.retention_days <= 365 and 0 < study.frame_retention_days <= 30


def test_exports_are_audited_and_previews_stay_out_of_analytics(client, acme):
    real = session_with_frames(acme.study, "real-1", acme.ad)
    preview = session_with_frames(acme.study, "preview-1", acme.ad, is_preview=True)
    assert SessionRollup.objects.filter(session=real).exists()
    assert not SessionRollup.objects.filter(session=preview).exists()
    assert participants_in_cells(acme.ad) == 1

    analyst = member(acme.organization, Role.ANALYST, "ann")
    client.force_login(analyst)
    response = client.get(f"/analytics/ads/{acme.ad.pk}/export/frames.csv?country=DE")
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert "real-1" in body and "preview-1" not in body
    entry = AuditLog.objects.get(action=AuditLog.Action.EXPORT)
    assert (entry.actor, entry.study, entry.organization) == (analyst, acme.study, acme.organization)
    assert entry.detail["export"] == "frames" and entry.detail["ad"] == acme.ad.pk
    assert entry.detail["filters"]["country"] == ["DE"]
