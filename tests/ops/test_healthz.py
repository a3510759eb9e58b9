"""GET /healthz: the process is up. No sign-in, no database, never redirected."""

from django.test import override_settings


def test_healthz_answers_ok_without_touching_the_database(client):
    # No `db` fixture: pytest-django refuses any database access, so this also proves healthz needs none.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_needs_no_sign_in(client):
    assert client.get("/studies/").status_code == 302  # anonymous: sent to the sign-in page
    response = client.get("/healthz")
    assert response.status_code == 200 and "Location" not in response


@override_settings(SECURE_SSL_REDIRECT=True)
def test_healthz_is_not_redirected_to_https_in_production(client):
    # Under PORTAL_HTTPS every plain-HTTP request is redirected, but a probe must reach the check itself.
    assert client.get("/studies/").status_code == 301
    assert client.get("/healthz").status_code == 200


def test_healthz_head_works_and_writes_are_refused(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405
