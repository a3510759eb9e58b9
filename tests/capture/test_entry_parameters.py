"""Every bad parameter gets a clear 400, never a 500.

NUL and other control characters, bytes that are not UTF-8, over-long values, repeated parameters and
malformed path tokens, on the study link and on every participant page; the page is in the participant's
language. Also through the production server (daphne), with raw bytes no browser would send.
"""

from __future__ import annotations

import json
import socket
from html import unescape
from urllib.parse import urlsplit

import pytest

from research_portal.capture.models import ParticipantSession, SessionEvent

pytestmark = pytest.mark.django_db

BAD_QUERIES = {
    "NUL in the panel id": "pid=a%00b&c=US",
    "NUL alone": "pid=%00&c=US",
    "NUL in the country": "pid=a&c=D%00",
    "NUL in another parameter": "pid=a&c=US&src=x%00y",
    "NUL in a parameter name": "pid=a&c=US&s%00rc=x",
    "a control character": "pid=a%01b&c=US",
    "a newline": "pid=a%0Ab&c=US",
    "a tab": "pid=a&c=US&src=a%09b",
    "DEL": "pid=a%7Fb&c=US",
    "a C1 control": "pid=a&c=US&src=a%C2%85b",
    "a bidi override": "pid=a&c=US&src=%E2%80%AEtxt",
    "a lone surrogate": "pid=a&c=US&src=%ED%A0%80",
    "not UTF-8": "pid=a%FFb&c=US",
    "not UTF-8 elsewhere": "pid=a&c=US&src=%C3%28",
    "truncated UTF-8": "pid=a&c=US&src=%E2%82",
    "raw non-ASCII": "pid=a&c=US&src=caf\u00e9",
    "an over-long panel id": "pid=" + "a" * 129 + "&c=US",
    "an over-long value": "pid=a&c=US&src=" + "x" * 600,
    "an over-long query": "pid=a&c=US" + "&src=" + "x" * 500 + "&more=" + "y" * 500 * 8,
    "too many parameters": "pid=a&c=US&" + "&".join(f"p{i}=1" for i in range(60)),
    "thousands of parameters": "pid=a&c=US" + "&a" * 1500,
    "the panel id twice": "pid=a&pid=b&c=US",
    "the country twice": "pid=a&c=US&c=DE",
    "a bad country": "pid=a&c=Deutschland",
    "a country code ISO 3166-1 does not assign": "pid=a&c=XX",
    "UK, which ISO calls GB": "pid=a&c=uk",
    "markup in the panel id": "pid=%3Cscript%3E&c=US",
}


def entry_url(acme, query: str) -> str:
    return f"/s/{acme.study.public_id}/?{query}"


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_study_link_parameters_get_a_clear_400_and_start_nothing(client, acme, query):
    response = client.get(entry_url(acme, query), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "This link is not valid" in response.content.decode()
    assert not ParticipantSession.objects.exists()
    assert not response.cookies


def test_the_400_page_is_in_the_participants_language(client, acme):
    german = client.get(entry_url(acme, "pid=a%00b&c=DE"), HTTP_ACCEPT_LANGUAGE="en")
    assert german["Content-Language"] == "de" and "Dieser Link ist ungültig" in german.content.decode()
    # No usable country: the browser's language.
    japanese = client.get(entry_url(acme, "pid=a%00b&c=%00"), HTTP_ACCEPT_LANGUAGE="ja")
    assert (
        '<html lang="ja">' in japanese.content.decode()
        and "このリンクは無効です" in japanese.content.decode()
    )


def test_a_returning_panel_id_with_a_bad_parameter_is_refused_before_anything_is_looked_up(client, acme):
    client.get(entry_url(acme, "pid=p-1&c=US"))
    assert client.get(entry_url(acme, "pid=p-1&c=US&x=%00")).status_code == 400


@pytest.mark.parametrize("public_id", ["a%00b", "a%FFb", "x" * 65, "a%0Ab", "a.b"])
def test_a_malformed_study_id_is_a_clear_400_page(client, public_id):
    response = client.get(f"/s/{public_id}/?pid=a&c=DE", HTTP_ACCEPT_LANGUAGE="pt")
    assert response.status_code == 400 and "Este link não é válido" in response.content.decode()


def test_a_well_formed_unknown_study_id_is_still_404(client):
    assert client.get("/s/no-such-study/?pid=a&c=DE").status_code == 404


def test_good_links_still_work_with_unicode_panel_ids_and_extra_parameters(client, acme):
    response = client.get(entry_url(acme, "pid=Jos%C3%A9-1&c=us&src=spring+mail&utm=a%2Fb"))
    session = ParticipantSession.objects.get()
    assert response.url == f"/p/{session.token}/consent/"
    assert (session.external_participant_id, session.country) == ("José-1", "US")


# ---- the pages behind the token --------------------------------------------------------------------------


@pytest.fixture
def session(acme) -> ParticipantSession:
    return ParticipantSession.objects.create(study=acme.study, language="fr", ad_sequence=[acme.ad.pk])


@pytest.mark.parametrize("token", ["a%00b", "a%FFb", "x" * 65, "a%01", "%E2%80%AE"])
@pytest.mark.parametrize("page", ["consent/", "check/", "watch/", "end/", "outcome"])
def test_a_malformed_session_token_is_a_clear_400(client, token, page):
    response = client.get(f"/p/{token}/{page}", HTTP_ACCEPT_LANGUAGE="es")
    assert response.status_code == 400
    assert "Este enlace no es válido" in response.content.decode()


def test_a_well_formed_unknown_token_is_still_404(client):
    assert client.get("/p/unknown/consent/").status_code == 404


@pytest.mark.parametrize("query", ["x=%00", "x=%FF", "x=" + "a" * 600, "x%01=1"])
def test_bad_query_parameters_on_participant_pages_get_a_400_in_their_language(client, session, query):
    response = client.get(f"/p/{session.token}/consent/?{query}")
    assert response.status_code == 400 and response["Content-Language"] == "fr"
    assert "Ce lien n'est pas valide" in unescape(response.content.decode())


@pytest.mark.parametrize(
    "data",
    [
        "decision=accept%00",
        "decision=acc%FFept",
        "decision=accept&note=%00",
        "decision=accept&decision=decline",
        "decision=" + "a" * 600,
    ],
)
def test_bad_consent_form_fields_get_a_400_and_change_nothing(client, session, data):
    response = client.post(
        f"/p/{session.token}/consent/", data, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    session.refresh_from_db()
    assert session.state == "started" and session.consent_at is None


@pytest.fixture
def checking(acme) -> ParticipantSession:
    return ParticipantSession.objects.create(
        study=acme.study, state="consented", language="de", ad_sequence=[acme.ad.pk]
    )


@pytest.mark.parametrize(
    "fps", ["nan", "inf", "-inf", "1e309", "-1", "%00", "1%002", "x", "1" * 20, "5000", "", "29.81234"]
)
def test_bad_camera_rates_get_a_400(client, checking, fps):
    response = client.post(
        f"/p/{checking.token}/check/frame?fps={fps}", b"\xff\xd8\xff\xe0jpeg", content_type="image/jpeg"
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'"text"',
        b'{"problems": 5}',
        b'{"problems": null}',
        b'{"problems": "no_face"}',
        b'{"problems": [5]}',
        b'{"problems": ["no_face\\u0000"]}',
        b'{"problems": ["not_a_code"]}',
        b'{"problems": ["no_face", {"a": 1}]}',
        b"[" * 100_000,
        json.dumps({"problems": ["no_face"] * 21}).encode(),
        json.dumps({"problems": [], "pad": "x" * 5000}).encode(),
    ],
)
def test_bad_check_attempt_reports_get_a_400_and_change_nothing(client, checking, body):
    response = client.post(f"/p/{checking.token}/check/attempt-failed", body, content_type="application/json")
    assert response.status_code == 400 and response.json() == {"error": "bad_request"}
    checking.refresh_from_db()
    assert checking.check_attempts == 0 and not SessionEvent.objects.exists()


def test_a_good_check_attempt_report_is_still_recorded(client, checking):
    response = client.post(
        f"/p/{checking.token}/check/attempt-failed",
        json.dumps({"problems": ["too_dark", "no_face", "too_dark"]}),
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["failed"] is False
    assert SessionEvent.objects.get().detail == "too_dark,no_face"
    empty = client.post(f"/p/{checking.token}/check/attempt-failed", b"", content_type="application/json")
    assert empty.status_code == 200  # an empty report: no problems


# ---- through the production server ------------------------------------------------------------------------


def raw_get(base_url: str, target: bytes) -> tuple[int, bytes]:
    """A GET with the request target sent byte for byte (no client library re-encodes it)."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        connection.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def test_the_production_server_answers_bad_bytes_with_400(acme, asgi_server):
    base = f"/s/{acme.study.public_id}/?".encode()
    for query in (b"pid=a%00b&c=DE", b"pid=a%FFb&c=DE", b"pid=a&c=DE&x=\xff\xfe", b"pid=a\xc3\xa9&c=DE"):
        status, answer = raw_get(asgi_server, base + query)
        assert status == 400, (query, answer[:300])
    for target in (b"/p/a%00b/consent/", b"/s/a%00b/?pid=a&c=DE"):
        status, answer = raw_get(asgi_server, target)
        assert status == 400, (target, answer[:300])
    assert not ParticipantSession.objects.exists()
