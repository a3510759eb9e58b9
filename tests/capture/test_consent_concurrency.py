"""First consents at the same moment in a language without a consent version.

Each participant may try to create the next version number; the unique (study, version) constraint lets one
win and the others read again (inside a savepoint), so nobody gets a 500. Real threads, real Postgres.
"""

from __future__ import annotations

from django.db import transaction
from django.test import Client
from django.utils import translation

from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import consent_text_for
from research_portal.studies.models import ConsentVersion
from tests.capture.test_entry_quota_burst import at_once, in_threads, wait_for_lock_waiters

PARALLEL = 8


def consent(session: ParticipantSession) -> int:
    return Client().post(f"/p/{session.token}/consent/", {"decision": "accept"}).status_code


def test_first_consents_at_the_same_moment_share_one_version(postgres, acme):
    sessions = [ParticipantSession.objects.create(study=acme.study, language="de") for _ in range(PARALLEL)]
    statuses = at_once(PARALLEL, lambda index: consent(sessions[index]))
    assert statuses == [302] * PARALLEL
    version = ConsentVersion.objects.get()
    assert (version.version, version.language) == (1, "de")
    assert version.text.startswith("Wir bitten Sie um Zugriff auf Ihre Webcam")
    assert set(ParticipantSession.objects.values_list("state", "consent_version")) == {
        ("consented", version.pk)
    }


def test_first_consents_in_several_languages_at_once_get_one_version_each(postgres, acme):
    languages = ["de", "fr", "ja", "es"] * 3
    sessions = [ParticipantSession.objects.create(study=acme.study, language=code) for code in languages]
    assert at_once(len(sessions), lambda index: consent(sessions[index])) == [302] * len(sessions)
    versions = {version.language: version for version in ConsentVersion.objects.all()}
    assert sorted(versions) == ["de", "es", "fr", "ja"]
    assert sorted(version.version for version in versions.values()) == [1, 2, 3, 4]
    for session in ParticipantSession.objects.select_related("consent_version"):
        assert session.consent_version == versions[session.language]


def test_a_lost_race_for_the_version_number_reads_the_winners_version(postgres, acme):
    """Deterministic: the winner's row is inserted but not committed while every participant's insert of
    the same number waits on it; once it commits, they all hit the unique constraint, and each must
    recover inside a savepoint and use the winner's version."""
    sessions = [ParticipantSession.objects.create(study=acme.study, language="fr") for _ in range(PARALLEL)]
    with translation.override("fr"):
        text = consent_text_for(acme.study, "fr")
    with transaction.atomic():
        winner = ConsentVersion.objects.create(study=acme.study, version=1, language="fr", text=text)
        join = in_threads(PARALLEL, lambda index: consent(sessions[index]))
        wait_for_lock_waiters(PARALLEL)
    assert join() == [302] * PARALLEL
    assert list(ConsentVersion.objects.values_list("pk", flat=True)) == [winner.pk]
    assert set(ParticipantSession.objects.values_list("consent_version", flat=True)) == {winner.pk}


def test_a_lost_race_to_another_languages_text_takes_the_next_number(postgres, acme):
    sessions = [ParticipantSession.objects.create(study=acme.study, language="ja") for _ in range(PARALLEL)]
    with transaction.atomic():
        ConsentVersion.objects.create(study=acme.study, version=1, language="de", text="Deutscher Text")
        join = in_threads(PARALLEL, lambda index: consent(sessions[index]))
        wait_for_lock_waiters(PARALLEL)
    assert join() == [302] * PARALLEL
    japanese = ConsentVersion.objects.get(language="ja")
    assert japanese.version == 2
    assert set(ParticipantSession.objects.values_list("consent_version", flat=True)) == {japanese.pk}


def test_two_tabs_posting_consent_at_once_record_it_once(postgres, acme):
    session = ParticipantSession.objects.create(study=acme.study)
    assert at_once(4, lambda index: consent(session)) == [302] * 4
    session.refresh_from_db()
    assert session.state == "consented" and ConsentVersion.objects.count() == 1
