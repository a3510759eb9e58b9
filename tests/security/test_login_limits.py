"""One sign-in limiter for every way in (docs/security.md, L1): Django admin's /admin/login/, the portal's
/accounts/login/ and invitation links count failed attempts per (username, client address) under a looser
ceiling per address; a lockout on one path holds on the others; successful sign-ins never count.

Counters live in the real Redis cache (REDIS_URL); each test signs in from addresses of its own."""

from __future__ import annotations

import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory, override_settings

from research_portal.accounts.models import Role
from research_portal.accounts.ratelimit import LoginThrottled, do_start_login_attempt
from research_portal.accounts.services import do_invite
from tests.support.people import PASSWORD, member, staff_user
from tests.support.processes import free_port
from tests.support.services import service_env, start_daphne

LIMITS = {"login": "3/300", "login_address": "8/300", "entry": "30/60", "check_frame": "40/10"}


def address() -> str:
    """A client address no other test (or earlier run, within the window) has used."""
    return f"203.0.113.{secrets.randbelow(250)}-{secrets.token_hex(6)}"


def portal_sign_in(client: Client, username: str, password: str) -> int:
    return client.post("/accounts/login/", {"username": username, "password": password}).status_code


def admin_sign_in(client: Client, username: str, password: str) -> int:
    data = {"username": username, "password": password, "next": "/admin/"}
    return client.post("/admin/login/?next=/admin/", data).status_code


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def root(db):
    return staff_user("root")


@pytest.mark.django_db
@override_settings(RATE_LIMITS=LIMITS)
def test_admin_sign_in_is_limited_and_cannot_bypass_a_portal_lockout(root):
    client = Client(REMOTE_ADDR=address())
    for _ in range(3):
        assert admin_sign_in(client, "root", "guess") == 200  # the admin form again, with its error
    blocked = client.post("/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD})
    assert blocked.status_code == 429 and b"Too many attempts" in blocked.content
    assert blocked["Retry-After"] == "300"
    assert not signed_in(client)  # even the right password is refused while locked

    # Locked on the portal's form: the admin form is locked too (one counter for both), and vice versa.
    other = Client(REMOTE_ADDR=address())
    for _ in range(3):
        assert portal_sign_in(other, "root", "guess") == 200
    assert admin_sign_in(other, "root", PASSWORD) == 429
    assert portal_sign_in(other, "root", PASSWORD) == 429
    assert not signed_in(other)
    mixed = Client(REMOTE_ADDR=address())
    assert portal_sign_in(mixed, "root", "guess") == 200
    assert admin_sign_in(mixed, "root", "guess") == 200
    assert portal_sign_in(mixed, "ROOT", "guess") == 200  # case variants share the counter
    assert admin_sign_in(mixed, "root", PASSWORD) == 429


@pytest.mark.django_db
@override_settings(RATE_LIMITS=LIMITS)
def test_the_limit_is_per_username_and_address(acme):
    member(acme.organization, Role.ADMIN, "ada")
    member(acme.organization, Role.ANALYST, "bob")
    office = address()
    ada = Client(REMOTE_ADDR=office)
    for _ in range(3):
        assert portal_sign_in(ada, "ada", "guess") == 200
    assert portal_sign_in(ada, "ada", PASSWORD) == 429
    # A colleague behind the same NAT signs in; so does ada from another address.
    bob = Client(REMOTE_ADDR=office)
    assert portal_sign_in(bob, "bob", PASSWORD) == 302 and signed_in(bob)
    elsewhere = Client(REMOTE_ADDR=address())
    assert portal_sign_in(elsewhere, "ada", PASSWORD) == 302 and signed_in(elsewhere)


@pytest.mark.django_db
@override_settings(RATE_LIMITS=LIMITS)
def test_one_address_trying_many_usernames_meets_the_address_ceiling(acme):
    member(acme.organization, Role.ADMIN, "ada")
    client = Client(REMOTE_ADDR=address())
    for index in range(8):  # 8 different usernames, one failure each: under every per-name limit
        assert portal_sign_in(client, f"user{index}", "guess") == 200
    assert portal_sign_in(client, "ada", PASSWORD) == 429
    assert admin_sign_in(client, "someone-else", "guess") == 429
    assert portal_sign_in(Client(REMOTE_ADDR=address()), "ada", PASSWORD) == 302


@pytest.mark.django_db
@override_settings(RATE_LIMITS=LIMITS)
def test_successful_sign_ins_do_not_count(acme, root):
    member(acme.organization, Role.ADMIN, "ada")
    client = Client(REMOTE_ADDR=address())
    for _ in range(6):  # twice the limit
        assert portal_sign_in(client, "ada", PASSWORD) == 302
        client.post("/accounts/logout/")
        assert admin_sign_in(client, "root", PASSWORD) == 302
        client.post("/admin/logout/")
    assert portal_sign_in(client, "ada", "guess") == 200
    assert portal_sign_in(client, "ada", "guess") == 200
    assert portal_sign_in(client, "ada", PASSWORD) == 302  # the third attempt: two failures so far


@pytest.mark.django_db
@override_settings(RATE_LIMITS=LIMITS)
def test_invitation_links_are_limited_like_sign_ins(acme):
    admin = member(acme.organization, Role.ADMIN, "ada")
    _invitation, token = do_invite(acme.organization, "nina@example.org", Role.ANALYST, admin)
    client = Client(REMOTE_ADDR=address())
    for _ in range(4):  # opening a valid link is a success: never counted
        assert client.get(f"/accounts/invite/{token}/").status_code == 200
    for _ in range(8):  # guessed tokens: failures, under the address ceiling
        assert client.get(f"/accounts/invite/{secrets.token_urlsafe(32)}/").status_code == 404
    assert client.get(f"/accounts/invite/{token}/").status_code == 429
    answer = client.post(
        f"/accounts/invite/{token}/", {"username": "nina", "password1": "x" * 20, "password2": "x" * 20}
    )
    assert answer.status_code == 429
    assert not get_user_model().objects.filter(username="nina").exists()
    # The address ceiling covers the sign-in forms as well: one limiter.
    assert portal_sign_in(client, "ada", PASSWORD) == 429
    assert Client(REMOTE_ADDR=address()).get(f"/accounts/invite/{token}/").status_code == 200


@pytest.mark.django_db
def test_concurrent_attempts_cannot_slip_under_the_limit(redis_url, settings):
    """The count is taken before the password is checked, atomically in Redis: of 40 simultaneous attempts
    only as many as the limit go on to a password check."""
    settings.RATE_LIMITS = {**LIMITS, "login": "5/300", "login_address": "100/300"}
    request = RequestFactory(REMOTE_ADDR=address()).post("/accounts/login/")
    start, admitted, refused = threading.Barrier(40), [], []

    def attempt() -> None:
        start.wait()
        try:
            admitted.append(do_start_login_attempt(request, "mallory"))
        except LoginThrottled:
            refused.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 5 and len(refused) == 35
    admitted[0].do_succeeded()  # a success gives its attempt back: one more may try
    do_start_login_attempt(request, "mallory")
    with pytest.raises(LoginThrottled):
        do_start_login_attempt(request, "mallory")


# ---- through a real server -------------------------------------------------------------------------------


class Browser:
    """urllib with cookies, no redirects followed: each response's status as the server sent it."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), self.NoRedirects()
        )

    def request(self, path: str, data: dict | None = None) -> tuple[int, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base_url + path, data=body, headers={"Referer": self.base_url})
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post_form(self, path: str, fields: dict) -> int:
        _status, page = self.request(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
        return self.request(path, {**fields, "csrfmiddlewaretoken": token})[0]


def test_on_a_real_server_admin_sign_in_is_locked_with_the_portal(postgres, redis_url, tmp_path):
    username = f"root{secrets.token_hex(4)}"  # the server's address is 127.0.0.1: a name of this run
    staff_user(username)
    env = {**service_env(postgres, redis_url), "RATE_LIMIT_LOGIN": "3/300"}
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    try:
        browser = Browser(f"http://127.0.0.1:{port}")
        for _ in range(3):
            assert browser.post_form("/accounts/login/", {"username": username, "password": "guess"}) == 200
        admin_form = {"username": username, "password": PASSWORD, "next": "/admin/"}
        assert browser.post_form("/admin/login/?next=/admin/", admin_form) == 429
        assert browser.request("/admin/")[0] == 302  # not signed in: sent to the admin's sign-in page
        # Another user on the same address is not locked out, and signs in to admin.
        colleague = f"staff{secrets.token_hex(4)}"
        staff_user(colleague)
        other = Browser(f"http://127.0.0.1:{port}")
        signed = {"username": colleague, "password": PASSWORD, "next": "/admin/"}
        assert other.post_form("/admin/login/?next=/admin/", signed) == 302
        assert other.request("/admin/")[0] == 200
    finally:
        server.stop()
