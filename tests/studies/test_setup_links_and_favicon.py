"""The participant links panel (copy buttons, what to put in place of COUNTRY) and the favicon every page
links and /favicon.ico answers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_each_participant_link_has_a_copy_button(client, alice, acme):
    client.force_login(alice)
    html = client.get(f"/studies/{acme.study.pk}/").content.decode()
    for country in acme.study.allowed_countries:
        assert f'id="link-{country}"' in html and f'data-copy="link-{country}"' in html
    assert '<script src="/static/setup/copy.js"></script>' in html
    assert "COUNTRY" not in html  # only listed countries: no placeholder to explain


def test_the_any_country_link_says_what_to_put_for_country(client, alice, acme):
    acme.study.allowed_countries = []
    acme.study.save()
    client.force_login(alice)
    html = client.get(f"/studies/{acme.study.pk}/").content.decode()
    assert f"/s/{acme.study.public_id}/?pid=PARTICIPANT_ID&amp;c=COUNTRY" in html
    assert 'data-copy="link-any"' in html
    assert "COUNTRY with the participant's country as an ISO 3166-1 two-letter code, e.g. DE or US" in html


def test_the_copy_script_uses_no_library():
    from django.contrib.staticfiles import finders

    source = open(finders.find("setup/copy.js"), encoding="utf-8").read()
    assert "navigator.clipboard" in source and "import " not in source and "require(" not in source


@pytest.mark.parametrize("who", ["anon", "alice"])
def test_every_kind_of_page_links_the_favicon(client, alice, acme, who):
    if who == "alice":
        client.force_login(alice)
        pages = ["/studies/", "/analytics/", f"/studies/{acme.study.pk}/"]
    else:
        pages = ["/accounts/login/", f"/s/{acme.study.public_id}/?pid=f-1&c=DE"]
    for url in pages:
        html = client.get(url, follow=True).content.decode()
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html, url
        assert '<link rel="icon" href="/static/favicon.ico" sizes="32x32">' in html, url


def test_favicon_ico_is_served_not_a_404(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/favicon.ico"
    icon = client.get(response["Location"])
    body = b"".join(icon.streaming_content)
    assert icon.status_code == 200 and body[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert body[22:30] == b"\x89PNG\r\n\x1a\n"  # its one 32x32 image, PNG inside
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg["Content-Type"].startswith("image/svg+xml")
