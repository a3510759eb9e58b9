"""Security basics: production settings pass `check --deploy`, secrets only from the environment, secure
cookies and HSTS, CSRF on every form, rate limits on participant entry (sign-in: test_login_limits.py),
unguessable socket tokens bound to one session, size-limited uploads (bodies: test_body_limits.py), no stack
traces for users."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client, override_settings

from inference.resources import REPO_ROOT
from research_portal.accounts.models import Role
from research_portal.capture.models import ParticipantSession
from tests.support.people import PASSWORD, member

PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(64),
    "PORTAL_HTTPS": "1",
    "ALLOWED_HOSTS": "portal.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://portal.example.org",
    "DATABASE_URL": "postgres://portal:pw@db:5432/portal",
    "REDIS_URL": "redis://cache:6379/0",
}


def run_django(tmp_path, env: dict, code: str | None = None, args: list[str] | None = None):
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}}
    clean.update(env, DJANGO_SETTINGS_MODULE="research_portal.settings", PORTAL_VAR_DIR=str(tmp_path))
    command = [sys.executable, "-c", code] if code else [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=clean, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_env(tmp_path):
    result = run_django(tmp_path, PRODUCTION, args=["check", "--deploy", "--fail-level", "WARNING"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_secure_cookies_hsts_and_https(tmp_path):
    code = (
        "import json, django; from django.conf import settings; django.setup(); print(json.dumps({"
        "k: getattr(settings, k) for k in ['DEBUG', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', "
        "'SESSION_COOKIE_HTTPONLY', 'X_FRAME_OPTIONS', 'SECURE_CONTENT_TYPE_NOSNIFF']}))"
    )
    result = run_django(tmp_path, PRODUCTION, code=code)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
    }
    # Embedded defaults: DEBUG off as well.
    result = run_django(
        tmp_path,
        {},
        code="import django; from django.conf import settings; django.setup(); print(settings.DEBUG)",
    )
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_production_refuses_to_start_without_a_secret_from_the_environment(tmp_path):
    env = {key: value for key, value in PRODUCTION.items() if key != "SECRET_KEY"}
    result = run_django(tmp_path, env, args=["check"])
    assert result.returncode != 0
    assert "SECRET_KEY must come from the environment" in result.stderr
    assert not (tmp_path / "secret_key").exists()  # no key was invented for production
    result = run_django(tmp_path, {**PRODUCTION, "PORTAL_DEBUG": "1"}, args=["check"])
    assert result.returncode != 0 and "PORTAL_DEBUG must be off" in result.stderr


def test_no_secret_is_hard_coded_in_settings():
    source = (REPO_ROOT / "research_portal" / "settings.py").read_text()
    assert 'SECRET_KEY = os.environ.get("SECRET_KEY") or embedded_secret_key()' in source
    assert "django-insecure" not in source


@pytest.mark.django_db
def test_every_form_needs_a_csrf_token(acme):
    admin = member(acme.organization, Role.ADMIN, "ada")
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/login/", {"username": "ada", "password": PASSWORD}).status_code == 403
    client.force_login(admin)
    study, ad = acme.study, acme.ad
    posts = [
        "/studies/new/",
        f"/studies/{study.pk}/",
        f"/studies/{study.pk}/ads/",
        f"/studies/{study.pk}/ads/{ad.pk}/move/down/",
        f"/studies/{study.pk}/ads/{ad.pk}/remove/",
        f"/studies/{study.pk}/status/pause/",
        f"/studies/{study.pk}/preview/",
        f"/studies/{study.pk}/delete-participant/",
        f"/studies/{study.pk}/delete/",
        f"/accounts/team/{acme.organization.pk}/",
        "/accounts/logout/",
        "/accounts/invite/" + "x" * 43 + "/",
    ]
    for url in posts:
        response = client.post(url, {"name": "x", "confirm_name": "Spring campaign", "panel_id": "p"})
        assert response.status_code == 403, url
        assert b"Form expired" in response.content
    session = ParticipantSession.objects.create(study=study)
    assert client.post(f"/p/{session.token}/consent/", {"decision": "accept"}).status_code == 403
    study.refresh_from_db()
    assert study.status == "live" and study.ads.count() == 1
    # With the token from the page, the same form works.
    page = client.get(f"/studies/{study.pk}/")
    token = (
        page.cookies["csrftoken"].value if "csrftoken" in page.cookies else client.cookies["csrftoken"].value
    )
    response = client.post(f"/studies/{study.pk}/status/pause/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.status == "paused"


@pytest.mark.django_db
@override_settings(RATE_LIMITS={"login": "3/300", "login_address": "100/300", "entry": "4/60"})
def test_participant_entry_is_rate_limited_per_address_and_study(acme):
    client = Client(REMOTE_ADDR=f"192.0.2.{secrets.randbelow(250)}-{secrets.token_hex(4)}")
    for index in range(4):
        response = client.get(f"/s/{acme.study.public_id}/?pid=bot{index}&c=DE")
        assert response.status_code == 302
    blocked = client.get(f"/s/{acme.study.public_id}/?pid=bot9&c=DE")
    assert blocked.status_code == 429
    assert not ParticipantSession.objects.filter(external_participant_id="bot9").exists()
    # Another study's link from the same address is counted separately.
    assert client.get(f"/s/{acme.other_study.public_id}/?pid=bot9&c=DE").status_code == 302


def test_session_tokens_are_256_bit_and_unique():
    from research_portal.capture.models import new_session_token

    tokens = {new_session_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(len(token) == 43 for token in tokens)  # 32 random bytes, URL-safe base64


@pytest.mark.django_db(transaction=True)
async def test_socket_token_is_bound_to_its_session(acme):
    from research_portal.asgi import application

    def make_sessions():
        from django.utils import timezone

        sessions = []
        for pid in ("a", "b"):
            sessions.append(
                ParticipantSession.objects.create(
                    study=acme.study,
                    external_participant_id=pid,
                    state=ParticipantSession.State.CONSENTED,
                    checks_passed_at=timezone.now(),
                    ad_sequence=[acme.ad.pk],
                )
            )
        return sessions

    first, second = await database_sync_to_async(make_sessions)()
    headers = [(b"origin", b"http://localhost")]
    try:
        tampered = first.token[:-1] + ("A" if first.token[-1] != "A" else "B")
        for token in (tampered, first.token[:20], "x" * 43):
            communicator = WebsocketCommunicator(application, f"/ws/capture/{token}/", headers=headers)
            connected, code = await communicator.connect()
            while connected:  # accepted first (so the close code reaches the browser), then closed
                message = await communicator.receive_output(timeout=5)
                if message["type"] == "websocket.close":
                    code, connected = message.get("code"), False
            assert code == 4001, token
        communicator = WebsocketCommunicator(application, f"/ws/capture/{first.token}/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        hello = await communicator.receive_json_from(timeout=5)
        assert hello["type"] == "hello" and hello["session"] == "viewing"
        await communicator.send_to(text_data=json.dumps({"type": "finish"}))
        await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        states = await database_sync_to_async(
            lambda: dict(
                ParticipantSession.objects.filter(pk__in=[first.pk, second.pk]).values_list("pk", "state")
            )
        )()
        assert states == {first.pk: "viewing", second.pk: "consented"}  # only the token's own session moved
    finally:
        await database_sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_oversized_uploads_are_refused_before_reading_them(client, acme):
    study = acme.study.__class__.objects.create(organization=acme.organization, name="Draft")
    client.force_login(member(acme.organization, Role.ADMIN, "ada"))
    with override_settings(AD_MAX_UPLOAD_BYTES=1024):
        response = client.post(
            f"/studies/{study.pk}/ads/",
            data=b"x" * 10,
            content_type="multipart/form-data; boundary=zz",
            CONTENT_LENGTH=str(50 * 1024 * 1024),
        )
    assert response.status_code == 413
    assert study.ads.count() == 0


@pytest.mark.django_db
@override_settings(ROOT_URLCONF="tests.security.urls", DEBUG=False)
def test_users_never_see_stack_traces(acme):
    client = Client(raise_request_exception=False)
    response = client.get("/broken/")
    assert response.status_code == 500
    assert b"Something went wrong" in response.content
    assert b"hunter2" not in response.content and b"Traceback" not in response.content
    missing = client.get("/no/such/page/")
    assert (
        missing.status_code == 404
        and b"Not found" in missing.content
        and b"urlpatterns" not in missing.content
    )
