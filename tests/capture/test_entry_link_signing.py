"""A panel id alone never hands out its session.

A returning panel id resumes only in the browser that started it (the entry cookie) or with a link the panel
signed (HMAC-SHA256 over the canonical query, per-study secret, optional signed time with a max age);
anyone else gets "This link was already used", with no token, no redirect and no cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import quote, urlencode

import pytest
from django.db import connections
from django.test import Client, override_settings
from django.utils import timezone

from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import (
    EntryRefused,
    canonical_query,
    check_link_signature,
    link_signature,
    read_entry_link,
)
from research_portal.studies.models import Study

pytestmark = pytest.mark.django_db

# The worked example of docs/architecture.md ("A participant's way through a study", panel link signing).
DOC_SECRET = "k7Jq2VxW9pLm4RtZ8sNc3HyB6dFg5QaE"
DOC_QUERY = "pid=panel-42&c=DE&src=spring%20mail&ts=1767225600"
DOC_CANONICAL = "c=DE&pid=panel-42&src=spring%20mail&ts=1767225600"
DOC_SIGNATURE = "39b63fd5d85d66e5e1b20bcacdef1434a04aa4491d37fb97ec1b0128f4cd0e64"
SECRET = "s3cr3t-0f-the-panel-which-is-long-enough"


def entry(study: Study) -> str:
    return f"/s/{study.public_id}/"


def sign(secret: str, params: dict[str, str], signature_param: str = "sig") -> dict[str, str]:
    """What a panel does, written independently of the portal's code: sort the percent-encoded pairs."""
    pairs = sorted((quote(k, safe="-._~"), quote(v, safe="-._~")) for k, v in params.items())
    message = "&".join(f"{k}={v}" for k, v in pairs)
    return {
        **params,
        signature_param: hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest(),
    }


def signed_study(study: Study, max_age_minutes: int = 0) -> Study:
    study.link_signing_secret = SECRET
    study.link_max_age_minutes = max_age_minutes
    study.save()
    return study


def assert_reveals_nothing(response, session: ParticipantSession) -> None:
    body = response.content.decode()
    assert session.token not in body and "/p/" not in body
    assert session.token not in str(response.headers)
    assert "Location" not in response.headers and not response.cookies
    assert 'http-equiv="refresh"' not in body


# ---- unsigned links: the browser that started the session owns it ------------------------------------------


def test_a_stranger_with_a_known_panel_id_cannot_get_the_session(acme):
    acme.study.redirect_complete_url = "https://panel.example/done?id={pid}"
    acme.study.save()
    participant = Client()
    participant.get(entry(acme.study), {"pid": "victim-1", "c": "DE"})
    session = ParticipantSession.objects.get(external_participant_id="victim-1")
    for state in ("started", "viewing", "completed"):
        ParticipantSession.objects.filter(pk=session.pk).update(state=state, checks_passed_at=timezone.now())
        response = Client().get(entry(acme.study), {"pid": "victim-1", "c": "DE"}, HTTP_ACCEPT_LANGUAGE="en")
        assert response.status_code == 409
        assert "Dieser Link wurde bereits verwendet" in response.content.decode()  # c=DE: German
        assert_reveals_nothing(response, session)
    assert ParticipantSession.objects.count() == 1


def test_the_participants_own_browser_resumes_its_session(acme):
    participant = Client()
    first = participant.get(entry(acme.study), {"pid": "p-1", "c": "US"})
    session = ParticipantSession.objects.get()
    assert first.url == f"/p/{session.token}/consent/"
    ParticipantSession.objects.filter(pk=session.pk).update(
        state="consented", checks_passed_at=timezone.now()
    )
    again = participant.get(entry(acme.study), {"pid": "p-1", "c": "US"})
    assert again.status_code == 302 and again.url == f"/p/{session.token}/watch/"


def test_the_entry_cookie_is_http_only_same_site_and_scoped_to_the_study_link(acme):
    response = Client().get(entry(acme.study), {"pid": "p-1", "c": "US"})
    cookie = response.cookies[f"facecode_entry_{acme.study.public_id}"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert cookie["path"] == f"/s/{acme.study.public_id}/"
    assert int(cookie["max-age"]) >= 30 * 24 * 3600
    assert not cookie["secure"]  # plain-HTTP development; PORTAL_HTTPS turns it on (next test)
    session = ParticipantSession.objects.get()
    assert session.token not in cookie.value
    assert "no-store" in response["Cache-Control"]  # never cached by a proxy: it names this browser's session


@override_settings(SESSION_COOKIE_SECURE=True)
def test_the_entry_cookie_is_secure_when_the_portal_runs_on_https(acme):
    response = Client().get(entry(acme.study), {"pid": "p-1", "c": "US"})
    assert response.cookies[f"facecode_entry_{acme.study.public_id}"]["secure"]


def test_forged_or_borrowed_cookies_do_not_resume(acme):
    owner = Client()
    owner.get(entry(acme.study), {"pid": "victim", "c": "US"})
    victim = ParticipantSession.objects.get()
    name = f"facecode_entry_{acme.study.public_id}"
    # The owner's cookie names the session id; a stranger writing that id without the signature gets nothing.
    stranger = Client()
    stranger.cookies[name] = str(victim.pk)
    assert stranger.get(entry(acme.study), {"pid": "victim", "c": "US"}).status_code == 409
    # A genuine cookie of another study, copied under this study's name, is signed for that study only.
    other = Client()
    other.get(entry(acme.other_study), {"pid": "mine", "c": "US"})
    stranger.cookies[name] = other.cookies[f"facecode_entry_{acme.other_study.public_id}"].value
    assert stranger.get(entry(acme.study), {"pid": "victim", "c": "US"}).status_code == 409
    # Garbage of any kind is no cookie at all.
    stranger.cookies[name] = "x" * 3000
    assert stranger.get(entry(acme.study), {"pid": "victim", "c": "US"}).status_code == 409
    # A stranger's own session does not unlock the victim's.
    stranger.cookies.pop(name)
    stranger.get(entry(acme.study), {"pid": "stranger", "c": "US"})
    assert stranger.get(entry(acme.study), {"pid": "victim", "c": "US"}).status_code == 409
    assert owner.get(entry(acme.study), {"pid": "victim", "c": "US"}).status_code == 302


def test_one_browser_keeps_several_sessions_of_a_study(acme):
    """A family computer or a tester: each panel id this browser started stays resumable."""
    browser = Client()
    for pid in ("a", "b", "c"):
        browser.get(entry(acme.study), {"pid": pid, "c": "US"})
    for pid in ("a", "b", "c"):
        session = ParticipantSession.objects.get(external_participant_id=pid)
        assert browser.get(entry(acme.study), {"pid": pid, "c": "US"}).url == f"/p/{session.token}/consent/"


def test_preview_sessions_cannot_be_reached_through_the_study_link(acme):
    from research_portal.capture.participation import do_start_preview

    preview = do_start_preview(acme.study, "en")
    response = Client().get(entry(acme.study), {"pid": preview.external_participant_id, "c": "US"})
    assert response.status_code == 409
    assert_reveals_nothing(response, preview)


def test_the_same_link_opened_at_once_in_many_browsers_makes_one_session(postgres, acme):
    """Without the per-study unique panel id, each request would find no session and make its own."""
    browsers = 8
    barrier = threading.Barrier(browsers)
    statuses: list[int] = []

    def open_link() -> None:
        try:
            barrier.wait()
            statuses.append(Client().get(entry(acme.study), {"pid": "twice", "c": "US"}).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=open_link) for _ in range(browsers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [302] + [409] * (browsers - 1)
    assert ParticipantSession.objects.filter(external_participant_id="twice").count() == 1


# ---- signed links ------------------------------------------------------------------------------------------


def test_the_worked_example_of_the_docs(acme):
    """docs/architecture.md gives exactly these values; a panel implementing them must get in."""
    from django.http import QueryDict

    study = acme.study
    study.link_signing_secret = DOC_SECRET
    study.save()
    link = read_entry_link(study, QueryDict(DOC_QUERY), DOC_QUERY)
    assert canonical_query(link.params, "sig") == DOC_CANONICAL
    assert link_signature(DOC_SECRET, DOC_CANONICAL) == DOC_SIGNATURE
    # As the panel sends it (the signature appended) it gets in, and comes back from any browser.
    response = Client().get(f"{entry(study)}?{DOC_QUERY}&sig={DOC_SIGNATURE}")
    session = ParticipantSession.objects.get(external_participant_id="panel-42")
    assert response.url == f"/p/{session.token}/consent/" and session.country == "DE"
    assert Client().get(f"{entry(study)}?{DOC_QUERY}&sig={DOC_SIGNATURE}").url == response.url
    # With a max age, the example's time (2026-01-01T00:00:00Z) is checked against the clock.
    study.link_max_age_minutes = 60
    signed_link = read_entry_link(study, QueryDict(f"{DOC_QUERY}&sig={DOC_SIGNATURE}"), DOC_QUERY)
    check_link_signature(study, signed_link, now=datetime(2026, 1, 1, 0, 59, tzinfo=UTC))
    with pytest.raises(EntryRefused) as expired:
        check_link_signature(study, signed_link, now=datetime(2026, 1, 1, 1, 1, tzinfo=UTC))
    assert expired.value.title == "This link has expired"


def test_a_signed_study_resumes_from_any_browser_with_the_panels_link(acme):
    study = signed_study(acme.study)
    params = sign(SECRET, {"pid": "p-7", "c": "US"})
    first = Client().get(entry(study), params)
    session = ParticipantSession.objects.get()
    assert first.url == f"/p/{session.token}/consent/"
    assert Client().get(entry(study), params).url == first.url  # another device, same signed link
    assert Client().get(entry(study), {"pid": "p-7", "c": "US"}).status_code == 403  # unsigned: refused


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: {**p, "pid": "p-8"}, id="another panel id"),
        pytest.param(lambda p: {**p, "c": "FR"}, id="another country"),
        pytest.param(lambda p: {**p, "extra": "1"}, id="a parameter added"),
        pytest.param(lambda p: {k: v for k, v in p.items() if k != "src"}, id="a parameter removed"),
        pytest.param(lambda p: {**p, "sig": p["sig"][:-1] + ("0" if p["sig"][-1] != "0" else "1")}, id="bit"),
        pytest.param(lambda p: {k: v for k, v in p.items() if k != "sig"}, id="no signature"),
        pytest.param(lambda p: {**p, "sig": "0" * 64}, id="zeros"),
    ],
)
def test_a_signed_study_refuses_links_that_are_not_exactly_what_the_panel_signed(acme, tamper):
    study = signed_study(acme.study)
    genuine = sign(SECRET, {"pid": "p-7", "c": "US", "src": "mail"})
    response = Client().get(entry(study), tamper(genuine), HTTP_ACCEPT_LANGUAGE="fr")
    assert response.status_code == 403
    assert "Ce lien n'est pas valide" in unescape(response.content.decode())
    assert not ParticipantSession.objects.exists()
    # A link signed for someone else is no use for a returning participant either.
    Client().get(entry(study), genuine)
    session = ParticipantSession.objects.get()
    stolen = Client().get(entry(study), tamper(genuine))
    assert stolen.status_code == 403 and session.token not in stolen.content.decode()


def test_signatures_are_case_insensitive_hex_and_other_secrets_do_not_verify(acme):
    study = signed_study(acme.study)
    params = sign(SECRET, {"pid": "p-1", "c": "US"})
    assert Client().get(entry(study), {**params, "sig": params["sig"].upper()}).status_code == 302
    wrong = sign(SECRET + "x", {"pid": "p-2", "c": "US"})
    assert Client().get(entry(study), wrong).status_code == 403


def test_signed_links_may_carry_a_time_checked_against_the_studys_max_age(acme):
    study = signed_study(acme.study, max_age_minutes=30)
    now = int(time.time())
    fresh = sign(SECRET, {"pid": "p-1", "c": "US", "ts": str(now - 60)})
    assert Client().get(entry(study), fresh).status_code == 302
    old = sign(SECRET, {"pid": "p-2", "c": "US", "ts": str(now - 31 * 60)})
    response = Client().get(entry(study), old, HTTP_ACCEPT_LANGUAGE="ja")
    assert response.status_code == 403 and "このリンクは有効期限が切れています" in response.content.decode()
    future = sign(SECRET, {"pid": "p-3", "c": "US", "ts": str(now + 3600)})
    assert Client().get(entry(study), future).status_code == 403
    untimed = sign(SECRET, {"pid": "p-4", "c": "US"})
    assert Client().get(entry(study), untimed).status_code == 403
    far_future = sign(SECRET, {"pid": "p-5", "c": "US", "ts": "9" * 12})
    assert Client().get(entry(study), far_future).status_code == 403
    assert list(ParticipantSession.objects.values_list("external_participant_id", flat=True)) == ["p-1"]
    # An expired link no longer resumes from a new browser; the browser that started still does.
    ParticipantSession.objects.update(created_at=timezone.now() - timedelta(hours=2))
    stale = sign(SECRET, {"pid": "p-1", "c": "US", "ts": str(now - 3 * 3600)})
    assert Client().get(entry(study), stale).status_code == 403


def test_parameter_names_for_signature_and_time_are_per_study(acme):
    study = signed_study(acme.study, max_age_minutes=10)
    study.participant_id_param, study.link_signature_param, study.link_timestamp_param = "rid", "hash", "t"
    study.save()
    params = sign(SECRET, {"rid": "r-1", "c": "US", "t": str(int(time.time()))}, signature_param="hash")
    assert Client().get(entry(study), params).status_code == 302
    assert ParticipantSession.objects.get().external_participant_id == "r-1"


def test_a_returning_participant_keeps_the_cookie_on_a_signed_study(acme):
    """The cookie is checked first: the participant's own browser resumes even from a stripped link."""
    study = signed_study(acme.study)
    browser = Client()
    browser.get(entry(study), sign(SECRET, {"pid": "p-1", "c": "US"}))
    assert browser.get(entry(study), {"pid": "p-1", "c": "US"}).status_code == 302


def test_query_strings_are_signed_as_decoded_values(acme):
    """'+' and '%20' are both a space; the panel signs the value, not one of its spellings."""
    study = signed_study(acme.study)
    params = sign(SECRET, {"pid": "p-1", "c": "US", "note": "a b+c/é"})
    query = urlencode(params)  # spaces as '+', '+' as %2B, é as %C3%A9
    assert "+" in query and "%C3%A9" in query
    assert Client().get(f"{entry(study)}?{query}").status_code == 302


# ---- the new pages in every language ----------------------------------------------------------------------


def already_used_page(acme, language: str):
    from tests.capture.test_translations import COUNTRY_OF

    params = {"pid": f"used-{language}", "c": COUNTRY_OF[language]}
    acme.study.allowed_countries = []
    acme.study.save()
    Client().get(entry(acme.study), params)
    return Client().get(entry(acme.study), params, HTTP_ACCEPT_LANGUAGE=language)


def expired_page(acme, language: str):
    from tests.capture.test_translations import COUNTRY_OF

    study = signed_study(acme.study, max_age_minutes=5)
    study.allowed_countries = []
    study.save()
    params = sign(SECRET, {"pid": "p", "c": COUNTRY_OF[language], "ts": str(int(time.time()) - 3600)})
    return Client().get(entry(study), params)


def unsigned_page(acme, language: str):
    from tests.capture.test_translations import COUNTRY_OF

    study = signed_study(acme.study)
    return Client().get(entry(study), {"pid": "p", "c": COUNTRY_OF[language]})


NEW_PAGES = {
    "already used": (already_used_page, 409, ["This link was already used"]),
    "expired": (
        expired_page,
        403,
        ["This link has expired", "Please go back to your panel and open the study again."],
    ),
    "not signed": (unsigned_page, 403, ["This link is not valid"]),
}


@pytest.mark.parametrize("page", NEW_PAGES)
@pytest.mark.parametrize("language", ["de", "fr", "es", "pt", "ja"])
def test_the_new_refusal_pages_have_no_english_left(acme, language, page):
    from tests.capture.test_translations import catalog, english_leaks

    reach, status, expected = NEW_PAGES[page]
    response = reach(acme, language)
    assert response.status_code == status and response["Content-Language"] == language
    text = unescape(response.content.decode())
    assert f'<html lang="{language}">' in text
    assert not english_leaks(text, language)
    for msgid in expected:
        assert catalog(language)[msgid] in text
