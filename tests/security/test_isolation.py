"""Isolation: an analyst (and an admin) of another organisation tries every URL of Acme's study: set-up pages,
dashboards, exports, the ad video, the live feed sockets, Django admin, participant sessions. All 404 or 403,
nothing of the study in any answer. Ad videos have no public path."""

from __future__ import annotations

import re

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections

from research_portal.accounts.models import Organization, Role
from research_portal.analytics.exports import EXPORTERS
from research_portal.capture.models import ParticipantSession
from tests.support.people import member
from tests.support.readings import session_with_frames

SECRETS = [b"Spring campaign", b"Spring ad", b"panelist-42"]


def acme_urls(acme, session: ParticipantSession) -> list[tuple[str, str]]:
    study, ad = acme.study, acme.ad
    gets = [
        f"/studies/{study.pk}/",
        f"/studies/{study.pk}/ads/{ad.pk}/video",
        f"/analytics/studies/{study.pk}/",
        f"/analytics/studies/{study.pk}/data.json",
        f"/analytics/ads/{ad.pk}/",
        f"/analytics/ads/{ad.pk}/data.json",
        f"/analytics/ads/{ad.pk}/video",
        *[f"/analytics/ads/{ad.pk}/export/{kind}.csv" for kind in EXPORTERS],
        "/admin/",
        f"/admin/studies/study/{study.pk}/change/",
        f"/admin/studies/ad/{ad.pk}/change/",
        f"/admin/capture/participantsession/{session.pk}/change/",
        f"/admin/capture/participantsession/?q={session.external_participant_id}",
        f"/admin/accounts/organization/{acme.organization.pk}/change/",
        f"/accounts/team/{acme.organization.pk}/",
        f"/media/{ad.video.name}",
        f"/p/{session.token[:-2]}xx/consent/",
    ]
    posts = [
        f"/studies/{study.pk}/",
        f"/studies/{study.pk}/ads/",
        f"/studies/{study.pk}/ads/{ad.pk}/move/down/",
        f"/studies/{study.pk}/ads/{ad.pk}/remove/",
        f"/studies/{study.pk}/status/close/",
        f"/studies/{study.pk}/preview/",
        f"/studies/{study.pk}/delete-participant/",
        f"/studies/{study.pk}/delete/",
    ]
    return [("get", url) for url in gets] + [("post", url) for url in posts]


@pytest.fixture
def rival_organization(db):
    return Organization.objects.create(name="Rival Insights")


@pytest.mark.parametrize("role", [Role.ANALYST, Role.ADMIN])
def test_another_organisation_reaches_nothing_of_acmes_study(client, acme, rival_organization, role):
    session = session_with_frames(acme.study, "panelist-42", acme.ad)
    client.force_login(member(rival_organization, role, "rival"))
    for method, url in acme_urls(acme, session):
        data = {"panel_id": "panelist-42", "confirm_name": "Spring campaign", "name": "x"}
        response = getattr(client, method)(url, data) if method == "post" else client.get(url)
        assert response.status_code in (403, 404), (method, url, response.status_code)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        for secret in SECRETS:
            assert secret not in body, (url, secret)
    # Nothing changed and nothing was deleted.
    acme.study.refresh_from_db()
    assert acme.study.status == "live" and acme.study.name == "Spring campaign"
    assert ParticipantSession.objects.filter(pk=session.pk).exists()
    assert acme.study.ads.count() == 1
    # Their own lists do not mention it either.
    for url in ("/studies/", "/analytics/"):
        page = client.get(url)
        assert page.status_code == 200 and b"Spring campaign" not in page.content


def test_a_study_that_does_not_exist_and_one_of_another_organisation_look_the_same(
    client, acme, rival_organization
):
    client.force_login(member(rival_organization, Role.ADMIN, "rival"))
    theirs = client.get(f"/studies/{acme.study.pk}/")
    missing = client.get("/studies/999999/")
    assert theirs.status_code == missing.status_code == 404
    token = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')
    assert token.sub(b"", theirs.content) == token.sub(b"", missing.content)


def test_signed_out_visitors_are_sent_to_sign_in(client, acme):
    for url in (f"/studies/{acme.study.pk}/", f"/analytics/ads/{acme.ad.pk}/video", "/studies/new/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    assert client.get(f"/media/{acme.ad.video.name}").status_code == 404


def cookie_header(client) -> list[tuple[bytes, bytes]]:
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://localhost")]


@pytest.mark.django_db(transaction=True)
async def test_live_feed_sockets_refuse_another_organisation(client, acme, rival_organization):
    from research_portal.asgi import application

    rival = await database_sync_to_async(member)(rival_organization, Role.ANALYST, "rival")
    await database_sync_to_async(client.force_login)(rival)
    try:
        for url in (f"/ws/analytics/ads/{acme.ad.pk}/", f"/ws/analytics/studies/{acme.study.pk}/"):
            communicator = WebsocketCommunicator(application, url, headers=cookie_header(client))
            await communicator.connect()
            message = await communicator.receive_output(timeout=5)
            assert message["type"] == "websocket.close" and message["code"] in (4003, 4004), message
            await communicator.disconnect()
    finally:
        await database_sync_to_async(connections.close_all)()
