"""Entry rules against Postgres: quotas of validated completes, resuming, redirects, page language."""

import pytest
from django.utils import timezone

from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import language_for, panel_redirect_url
from research_portal.studies.models import CountryQuota, Study

pytestmark = pytest.mark.django_db


def enter(client, study, pid, country, **headers):
    return client.get(f"/s/{study.public_id}/", {"pid": pid, "c": country}, **headers)


def completed(study, country, n, state="completed"):
    for index in range(n):
        ParticipantSession.objects.create(
            study=study, country=country, external_participant_id=f"{country}-{state}-{index}", state=state
        )


def test_full_country_quota_refuses_new_participants_with_the_over_quota_redirect(client, postgres, acme):
    acme.study.redirect_over_quota_url = "https://panel.example/oq?id={pid}"
    acme.study.save()
    CountryQuota.objects.create(study=acme.study, country="US", target=2)
    completed(acme.study, "US", 2)
    response = enter(client, acme.study, "late-1", "US")
    assert response.status_code == 403
    assert b"This study is full" in response.content
    assert b'content="5;url=https://panel.example/oq?id=late-1"' in response.content
    # The refusal is recorded (the study overview counts it), as an ended session that never starts.
    refused = ParticipantSession.objects.get(external_participant_id="late-1")
    assert (refused.state, refused.consent_at, refused.ad_sequence) == ("over_quota", None, [])
    assert refused.exclusion_reason.startswith("quota full")
    assert refused.token not in response.content.decode()
    # Opening the link again in the same browser shows the same outcome, and makes no second row.
    again = enter(client, acme.study, "late-1", "US")
    assert again.url == f"/p/{refused.token}/end/"
    assert ParticipantSession.objects.filter(external_participant_id="late-1").count() == 1


def test_only_validated_completes_count_toward_the_quota(client, postgres, acme):
    CountryQuota.objects.create(study=acme.study, country="DE", target=2)
    completed(acme.study, "DE", 1)
    completed(acme.study, "DE", 3, state="failed")
    completed(acme.study, "US", 5)
    assert enter(client, acme.study, "new-1", "DE").status_code == 302


def test_quota_of_one_country_does_not_close_another(client, postgres, acme):
    CountryQuota.objects.create(study=acme.study, country="DE", target=1)
    completed(acme.study, "DE", 1)
    assert enter(client, acme.study, "us-1", "US").status_code == 302


def test_returning_participant_resumes_where_they_were(client, postgres, acme):
    enter(client, acme.study, "panel-42", "DE")
    session = ParticipantSession.objects.get()
    session.state, session.checks_passed_at = "consented", timezone.now()
    session.save()
    response = enter(client, acme.study, "panel-42", "DE")
    assert response.url == f"/p/{session.token}/watch/"
    assert ParticipantSession.objects.count() == 1


def test_returning_participant_of_a_full_quota_still_resumes(client, postgres, acme):
    enter(client, acme.study, "early", "DE")
    CountryQuota.objects.create(study=acme.study, country="DE", target=1)
    completed(acme.study, "DE", 1)
    assert enter(client, acme.study, "early", "DE").status_code == 302


def test_ended_participant_coming_back_sees_their_outcome_not_a_new_session(client, postgres, acme):
    enter(client, acme.study, "done-1", "DE")
    session = ParticipantSession.objects.get()
    ParticipantSession.objects.filter(pk=session.pk).update(state="completed")
    response = enter(client, acme.study, "done-1", "DE")
    assert response.url == f"/p/{session.token}/end/"
    assert ParticipantSession.objects.count() == 1


def test_a_panel_id_coming_back_from_another_browser_is_told_the_link_was_used(postgres, acme):
    from django.test import Client

    completed(acme.study, "DE", 1)
    session = ParticipantSession.objects.get()
    response = enter(Client(), acme.study, session.external_participant_id, "US")
    assert response.status_code == 409 and b"This link was already used" in response.content
    assert session.token not in response.content.decode()
    assert ParticipantSession.objects.count() == 1


def test_closed_study_sends_participants_back_as_over_quota(client, postgres, acme):
    acme.study.status = Study.Status.PAUSED
    acme.study.redirect_over_quota_url = "https://panel.example/oq?id={pid}"
    acme.study.save()
    response = enter(client, acme.study, "p-9", "DE")
    assert response.status_code == 410 and b"https://panel.example/oq?id=p-9" in response.content


def test_random_order_is_a_shuffle_kept_per_participant(client, postgres, acme, ad_video_file):
    from django.core.files import File

    from research_portal.studies.models import Ad

    for index in range(5):
        ad = Ad(study=acme.study, title=f"Extra {index}", duration_ms=4000, position=index + 1)
        with ad_video_file.open("rb") as video:
            ad.video.save(ad_video_file.name, File(video), save=False)
        ad.save()
    fixed_order = list(acme.study.ads.order_by("position", "id").values_list("id", flat=True))
    enter(client, acme.study, "fixed", "DE")
    assert ParticipantSession.objects.get(external_participant_id="fixed").ad_sequence == fixed_order
    acme.study.ad_order = Study.AdOrder.RANDOM
    acme.study.save()
    orders = set()
    for index in range(8):
        enter(client, acme.study, f"random-{index}", "DE")
        order = ParticipantSession.objects.get(external_participant_id=f"random-{index}").ad_sequence
        assert sorted(order) == sorted(fixed_order)
        orders.add(tuple(order))
    assert len(orders) > 1  # 8 shuffles of 6 ads: all equal has probability 720**-7


def test_redirect_urls_carry_the_encoded_participant_id(acme):
    acme.study.redirect_complete_url = "https://panel.example/c?s=ok&rid={pid}"
    assert (
        panel_redirect_url(acme.study, "completed", "a/b&c") == "https://panel.example/c?s=ok&rid=a%2Fb%26c"
    )
    assert panel_redirect_url(acme.study, "failed", "x") == ""


@pytest.mark.parametrize(
    "country, browser, expected",
    [
        ("DE", "en-US", "de"),
        ("BR", "en", "pt"),
        ("MX", "de", "es"),
        ("JP", "", "ja"),
        ("US", "fr-CA", "fr"),
        ("US", "it", "en"),
        ("", "ja", "ja"),
    ],
)
def test_language_comes_from_the_country_else_the_browser(country, browser, expected):
    assert language_for(country, browser) == expected


def test_participant_pages_are_served_in_the_sessions_language(client, postgres, acme):
    enter(client, acme.study, "fr-1", "US", HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")
    session = ParticipantSession.objects.get()
    assert session.language == "fr"
    response = client.get(f"/p/{session.token}/consent/")
    assert response["Content-Language"] == "fr"
    assert '<html lang="fr">' in response.content.decode()


@pytest.mark.parametrize(
    "user_agent, device_type",
    [
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36", "desktop"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148", "mobile"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/131.0 Mobile Safari/537.36", "mobile"),
        ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) Mobile/15E148", "tablet"),
        ("Mozilla/5.0 (Linux; Android 14; SM-X710) Chrome/131.0 Safari/537.36", "tablet"),
        ("curl/8.0", "unknown"),
    ],
)
def test_device_type_is_recorded_at_entry(client, postgres, acme, user_agent, device_type):
    enter(client, acme.study, "dev-1", "DE", HTTP_USER_AGENT=user_agent)
    assert ParticipantSession.objects.get().device_type == device_type
