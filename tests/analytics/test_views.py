"""Access (login required, organisation checked in one place), the dashboard pages and their JSON, the analyst
video with Range requests, and plotly.js served from the installed plotly package."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import plotly
import pytest
from django.conf import settings
from django.http import Http404
from django.urls import reverse

from research_portal.analytics.attention import TURNED_TO_SCREEN
from research_portal.analytics.exports import EXPORT_KINDS
from research_portal.studies.permissions import check_can_view_study, studies_visible_to

SHIPPED_PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_JS_VERSION = re.search(rb"plotly\.js v([\d.]+)", SHIPPED_PLOTLY_JS.read_bytes()[:500])[1].decode()


def protected_urls(acme) -> list[str]:
    ad, study = acme.ad.pk, acme.study.pk
    return [
        reverse("analytics:study", args=[study]),
        reverse("analytics:study-data", args=[study]),
        reverse("analytics:ad", args=[ad]),
        reverse("analytics:ad-data", args=[ad]),
        reverse("analytics:ad-video", args=[ad]),
        *[reverse("analytics:ad-export", args=[ad, kind]) for kind in EXPORT_KINDS],
        reverse("analytics:ad-report", args=[ad]),
        *[
            f"{reverse(name)}?a={ad}&b={acme.other_ad.pk}"
            for name in ("analytics:compare", "analytics:compare-data", "analytics:compare-export")
        ],
    ]


def test_anonymous_visitors_are_sent_to_the_login_page(client, hand_fixture):
    for url in [reverse("analytics:studies"), *protected_urls(hand_fixture)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(f"{settings.LOGIN_URL}?next="), url


def test_a_member_of_another_organisation_gets_404_everywhere(client, analysts, hand_fixture):
    client.force_login(analysts.other)  # even an admin of their own organisation
    for url in protected_urls(hand_fixture):
        assert client.get(url).status_code == 404, url
    listing = client.get(reverse("analytics:studies"))
    assert listing.status_code == 200 and b"Spring campaign" not in listing.content


def test_the_access_rule_lives_in_one_function(analysts, acme):
    assert list(studies_visible_to(analysts.other)) == []
    assert set(studies_visible_to(analysts.acme)) == {acme.study, acme.other_study}
    assert acme.study in studies_visible_to(analysts.admin)
    check_can_view_study(analysts.acme, acme.study)
    with pytest.raises(Http404):
        check_can_view_study(analysts.other, acme.study)


def test_an_analyst_of_the_organisation_sees_the_dashboards(client, analysts, hand_fixture):
    client.force_login(analysts.acme)
    listing = client.get(reverse("analytics:studies"))
    assert b"Spring campaign" in listing.content and b"Spring ad" in listing.content
    page = client.get(reverse("analytics:ad", args=[hand_fixture.ad.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="fig-trace"' in html and 'id="dashboard-data"' in html
    assert reverse("analytics:plotly-js") in html and "cdn" not in html.lower()
    assert reverse("analytics:ad-video", args=[hand_fixture.ad.pk]) in html
    # The attention limits in words come from inference/attention.py, as in the PDF report.
    assert f"turned to the screen ({TURNED_TO_SCREEN}," in html and TURNED_TO_SCREEN.startswith("head yaw")
    assert "app;dur=" in page["Server-Timing"]
    overview = client.get(reverse("analytics:study", args=[hand_fixture.study.pk]))
    assert overview.status_code == 200 and b"Funnel by country" in overview.content


def test_superuser_and_missing_objects(client, analysts, hand_fixture):
    client.force_login(analysts.admin)
    assert client.get(reverse("analytics:ad-data", args=[hand_fixture.ad.pk])).status_code == 200
    assert client.get(reverse("analytics:ad-data", args=[999_999])).status_code == 404
    assert client.get(reverse("analytics:study", args=[999_999])).status_code == 404
    assert client.get(reverse("analytics:ad-export", args=[hand_fixture.ad.pk, "parquet"])).status_code == 404


def test_data_json_applies_repeated_query_parameters(client, analysts, hand_fixture):
    client.force_login(analysts.acme)
    url = reverse("analytics:ad-data", args=[hand_fixture.ad.pk])
    response = client.get(url + "?compare=US&compare=DE&country=DE&country=US&measure=valence")
    assert response.status_code == 200
    payload = json.loads(response.content)  # strict JSON: NaN would not parse in browsers either
    assert payload["comparison"]["countries"] == ["US", "DE"]
    assert payload["filters"]["country"] == ["DE", "US"]
    assert payload["comparison"]["measure"] == "valence"
    assert payload["options"]["countries"] == ["DE", "US"]
    assert payload["country_labels"] == {"DE": "Germany (DE)", "US": "United States (US)"}


@pytest.mark.parametrize(
    "query, message",
    [
        ("quality=0.42", "Quality must be one of"),
        ("compare=DE&compare=DE", "two different countries"),
        ("from=2026-05-01&to=2026-04-01", "ends before it starts"),
        ("device=fridge", "Device types are"),
        ("measure=joy", "Measure must be one of"),
    ],
)
def test_invalid_filters_are_refused_with_a_reason(client, analysts, hand_fixture, query, message):
    client.force_login(analysts.acme)
    response = client.get(reverse("analytics:ad-data", args=[hand_fixture.ad.pk]) + "?" + query)
    assert response.status_code == 400 and message in response.json()["error"]
    page = client.get(reverse("analytics:ad", args=[hand_fixture.ad.pk]) + "?" + query)
    assert page.status_code == 400 and message in page.content.decode()


def test_study_overview_funnel_exclusions_and_quotas(client, analysts, acme):
    from django.utils import timezone

    from research_portal.studies.models import CountryQuota
    from tests.support.readings import new_participant

    now = timezone.now()
    new_participant(acme.study, "DE", state="completed", checks_passed_at=now, viewing_ended_at=now)
    for usable in (3, 5):
        reason = f"not enough usable frames: Spring ad: {usable} usable of 20 expected frames"
        new_participant(
            acme.study,
            "DE",
            state="failed",
            checks_passed_at=now,
            viewing_ended_at=now,
            exclusion_reason=reason,
        )
    new_participant(acme.study, "US", state="declined", consent_at=None, exclusion_reason="declined consent")
    new_participant(acme.study, "US", state="over_quota", consent_at=None, exclusion_reason="")
    new_participant(acme.study, "JP", state="viewing", checks_passed_at=now)
    CountryQuota.objects.create(study=acme.study, country="DE", target=4)
    client.force_login(analysts.acme)
    payload = client.get(reverse("analytics:study-data", args=[acme.study.pk])).json()
    funnel = {row["country"]: row for row in payload["funnel"]}
    assert (funnel["DE"]["started"], funnel["DE"]["consented"], funnel["DE"]["checks_passed"]) == (3, 3, 3)
    assert (funnel["DE"]["viewed"], funnel["DE"]["validated"], funnel["DE"]["failed"]) == (3, 1, 2)
    assert (funnel["US"]["consented"], funnel["US"]["declined"], funnel["US"]["over_quota"]) == (0, 1, 1)
    # the over-quota US participant was refused at the door (no consent): counted as over quota, not started
    assert funnel["JP"]["in_progress"] == 1 and payload["total"]["started"] == 5
    reasons = {(x["state"], x["reason"]): x for x in payload["exclusions"]}
    usable = reasons[("failed", "not enough usable frames")]
    assert usable["count"] == 2 and usable["countries"] == {"DE": 2} and len(usable["examples"]) == 2
    assert reasons[("declined", "declined consent")]["count"] == 1
    assert reasons[("over_quota", "over quota")]["count"] == 1  # no reason given: the outcome names it
    assert payload["quotas"] == [{"country": "DE", "target": 4, "validated": 1, "share": 0.25}]
    assert payload["figures"]["quotas"] is not None
    # Countries by name and code in the charts; the data stays by code.
    names = [trace["name"] for trace in payload["figures"]["funnel"]["data"]]
    assert names == ["Germany (DE)", "Japan (JP)", "United States (US)"]
    assert payload["figures"]["quotas"]["data"][0]["y"] == ["Germany (DE)"]
    assert payload["country_labels"] == {"DE": "Germany (DE)", "JP": "Japan (JP)", "US": "United States (US)"}
    only_de = client.get(reverse("analytics:study-data", args=[acme.study.pk]) + "?country=DE").json()
    assert only_de["total"]["started"] == 3


def test_video_is_served_with_range_requests_for_seeking(client, analysts, acme):
    client.force_login(analysts.acme)
    url = reverse("analytics:ad-video", args=[acme.ad.pk])
    size = acme.ad.video.size
    whole = client.get(url)
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"
    assert len(b"".join(whole.streaming_content)) == size
    part = client.get(url, HTTP_RANGE="bytes=10-109")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 10-109/{size}"
    with acme.ad.video.open("rb") as video:
        video.seek(10)
        assert b"".join(part.streaming_content) == video.read(100)
    tail = client.get(url, HTTP_RANGE="bytes=-16")
    assert tail["Content-Range"] == f"bytes {size - 16}-{size - 1}/{size}" and tail["Content-Length"] == "16"
    assert client.get(url, HTTP_RANGE=f"bytes={size}-").status_code == 416


def test_plotly_js_comes_from_the_installed_package(client):
    url = reverse("analytics:plotly-js")
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/javascript")
    assert response.content == SHIPPED_PLOTLY_JS.read_bytes()
    assert f"plotly.js v{PLOTLY_JS_VERSION}".encode() in response.content[:500]
    zipped = client.get(url, HTTP_ACCEPT_ENCODING="gzip, br")
    assert zipped["Content-Encoding"] == "gzip" and gzip.decompress(zipped.content) == response.content
    assert "immutable" in response["Cache-Control"]


def test_an_ad_without_readings_shows_an_empty_dashboard(client, analysts, acme):
    client.force_login(analysts.acme)
    payload = client.get(reverse("analytics:ad-data", args=[acme.ad.pk])).json()
    assert (
        payload["totals"]["participants"] == 0 and payload["summary"] == [] and payload["comparison"] is None
    )
    smile = next(t for t in payload["figures"]["trace"]["data"] if t["name"] == "Smile")
    assert smile["y"] == [None] * 4  # the 4 s ad's seconds, all empty
    assert client.get(reverse("analytics:ad", args=[acme.ad.pk])).status_code == 200
    empty_export = client.get(reverse("analytics:ad-export", args=[acme.ad.pk, "seconds"]))
    assert b"".join(empty_export.streaming_content).decode().count("\n") == 1  # the header only


BAD_QUERIES = [
    "model=%00",  # NUL: Postgres refuses it in a string (was a 500)
    "compare=%00x",
    "compare=DE&compare=%00x",
    "compare=D1&compare=US",
    "country=%00E",
    "country=D%01",
    "device=%00",
    "measure=smile%00",
    "correction=bh%00",
    "layout=%00overlay",
    "from=2026-01-01%00",
    "from=20260101",
    "to=2026-W01-1",
    "quality=nan",
    "quality=inf",
    "quality=-0",
    "quality=%00",
    "quality=1e400",
    "completed=maybe",
    "baseline=%01",
    "model=" + "m" * 65,  # longer than any stored model version
    "model=%E2%80%AE1.0",  # a right-to-left override: invisible, not printable
    "%00=1",  # unknown parameters too: no control characters
    "x=%1b%5b31m",
    "x=" + "y" * 1001,
    "measure=smile&measure=valence",  # a single-valued parameter given twice
    "country=" + "DE," * 400,
    "&".join(["country=DE"] * 301),
]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_every_bad_parameter_gets_a_400_on_every_endpoint(client, analysts, hand_fixture, query):
    client.force_login(analysts.acme)
    for url in protected_urls(hand_fixture):
        if url.endswith("/video"):
            continue  # takes no filters
        response = client.get(url + "?" + query)
        assert response.status_code == 400, (url, query)


def test_good_parameters_still_work_and_unknown_model_versions_are_empty(client, analysts, hand_fixture):
    client.force_login(analysts.acme)
    url = reverse("analytics:ad-data", args=[hand_fixture.ad.pk])
    ok = "country=de&country=US&from=2026-03-01&to=2026-03-31&quality=0.30&completed=on&baseline=0&x=1"
    assert client.get(url + "?" + ok).status_code == 200
    other = client.get(url + "?model=some-other-model")
    assert other.status_code == 200
    for kind in EXPORT_KINDS:
        export = reverse("analytics:ad-export", args=[hand_fixture.ad.pk, kind])
        response = client.get(export + "?model=some-other-model&compare=DE&compare=US")
        assert response.status_code == 200
        b"".join(response.streaming_content)  # and the stream completes


def test_ids_beyond_the_database_range_are_not_found(client, analysts, hand_fixture):
    client.force_login(analysts.acme)
    huge = "9" * 30
    for url in (
        f"/analytics/ads/{huge}/",
        f"/analytics/ads/{huge}/data.json",
        f"/analytics/ads/{huge}/export/frames.csv",
        f"/analytics/ads/{huge}/video",
        f"/analytics/studies/{huge}/",
        f"/analytics/studies/{huge}/data.json",
    ):
        assert client.get(url).status_code == 404, url


def writes_in(queries) -> list[str]:
    """The statements of a CaptureQueriesContext that write or lock rows."""
    return [
        query["sql"]
        for query in queries.captured_queries
        if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", query["sql"], re.IGNORECASE)
        or "FOR UPDATE" in query["sql"].upper()
    ]


def test_dashboard_gets_never_write_even_with_rollups_to_reconcile(client, analysts, hand_fixture):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from research_portal.analytics.models import SessionRollup
    from research_portal.analytics.rollups import do_reconcile_due_studies, stale_session_ids
    from research_portal.capture.models import ParticipantSession

    study = hand_fixture.study
    # A change without a signal: the session's rollups are filed under its old attributes.
    filed = SessionRollup.objects.filter(study=study).first()
    ParticipantSession.objects.filter(pk=filed.pk).update(device_type="tablet")
    assert stale_session_ids(study.pk) == [filed.pk]
    client.force_login(analysts.acme)
    ad = hand_fixture.ad.pk
    urls = [
        reverse("analytics:studies"),
        reverse("analytics:study", args=[study.pk]),
        reverse("analytics:study-data", args=[study.pk]),
        reverse("analytics:ad", args=[ad]),
        reverse("analytics:ad-data", args=[ad]),
        reverse("analytics:ad-data", args=[ad]) + "?compare=DE&compare=US&baseline=1",
        reverse("analytics:ad-video", args=[ad]),
    ]
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content
        assert response.status_code == 200 and body, url
        assert writes_in(queries) == [], url
    assert stale_session_ids(study.pk) == [filed.pk]  # still: only the periodic reconcile re-files it
    assert do_reconcile_due_studies() == 1 and stale_session_ids(study.pk) == []
