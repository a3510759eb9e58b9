"""End to end: an analyst opens the ad dashboard of a seeded study in headless Debian Chromium, served by a
real daphne on Postgres and Redis. The plotly.js figures render (SVG, named traces), frames stored meanwhile
arrive over the live socket, clicking the chart seeks the ad video; screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connections

from inference.resources import REPO_ROOT
from research_portal.studies.models import CountryQuota
from tests.support.readings import T0, FrameWriter, new_participant

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts"
SHAPES = {"DE": [0.2, 0.7, 0.4, 0.2], "US": [0.3, 0.35, 0.3, 0.25], "JP": [0.1, 0.3, 0.2, 0.1]}


def seed(acme) -> None:
    """Three countries, a smile peak in second 1 that is strongest in DE; baseline frames for everyone."""
    for country, shape in SHAPES.items():
        for index in range(4):
            state = "completed" if index < 3 else "viewing"
            done = {"checks_passed_at": T0, "viewing_ended_at": T0 if index < 3 else None}
            writer = FrameWriter(new_participant(acme.study, country, state=state, **done))
            rows = writer.frames(None, 0, [0.1, 0.12, 0.1])
            for second, level in enumerate(shape):
                jitter = (index - 1.5) * 0.03
                rows += writer.frames(
                    acme.ad, second, [level + jitter - 0.02, level + jitter, level + jitter + 0.02]
                )
            from research_portal.capture.storage import store_results

            store_results(rows)
    failed = "not enough usable frames: Spring ad: 4 usable of 20 expected frames"
    new_participant(
        acme.study, "US", state="failed", checks_passed_at=T0, viewing_ended_at=T0, exclusion_reason=failed
    )
    new_participant(acme.study, "JP", state="declined", consent_at=None, exclusion_reason="declined consent")
    for country, target in (("DE", 6), ("US", 6), ("JP", 4)):
        CountryQuota.objects.create(study=acme.study, country=country, target=target)


def signed_in_page(browser, client, user, base_url: str):
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base_url}])
    return context.new_page()


def test_analyst_sees_rendered_live_dashboard_and_seeks_the_video(
    acme, analysts, asgi_server, analyst_browser, client
):
    ARTIFACTS.mkdir(exist_ok=True)
    seed(acme)
    page = signed_in_page(analyst_browser, client, analysts.acme, asgi_server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{asgi_server}/analytics/ads/{acme.ad.pk}/?compare=DE&compare=JP")
    page.wait_for_selector("#fig-trace .main-svg", timeout=20_000)
    page.wait_for_selector("#fig-countries .main-svg")
    page.wait_for_selector("#fig-difference .main-svg")

    trace_names = page.evaluate("document.getElementById('fig-trace').data.map(t => t.name)")
    assert {"Smile", "Valence", "Anger", "Participants (n)", "Smile 95% CI"} <= set(trace_names)
    country_names = page.evaluate("document.getElementById('fig-countries').data.map(t => t.name)")
    assert {"Germany (DE)", "United States (US)", "Japan (JP)"} <= set(country_names)
    # Plotly drew SVG: line paths for the visible traces, bars for n, the legend entries by name.
    assert page.locator("#fig-trace svg.main-svg .scatterlayer path.js-line").count() >= 2
    assert page.locator("#fig-trace .barlayer path").count() >= 4
    legend = page.locator("#fig-trace .legend .legendtext").all_text_contents()
    assert "Smile" in legend and "Valence" in legend
    assert page.locator("#summary tbody tr").count() == 4  # All + 3 countries
    assert "Germany (DE)" in page.locator("#summary tbody").inner_text()
    assert "Welch t-test" in page.locator("#comparison-note").inner_text()
    assert "Germany (DE) vs Japan (JP)" in page.locator("#comparison-note").inner_text()
    # The filters name the countries and send their codes.
    assert "Japan (JP)" in page.locator("#filters fieldset").first.inner_text()
    option = page.locator("select[name=compare]").first.locator("option[value=DE]")
    assert option.inner_text() == "Germany (DE)"
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'open'", timeout=10_000)
    # Durations in seconds; each key moment with its reason (or the note that none stands out), and the rule.
    cards = page.locator("#totals .card").all_inner_texts()
    assert any(card.startswith("Ad length") and card.endswith(" s") for card in cards)
    # The scorecard: five figures; the norm (no other ad of Acme has participants) says it is too small.
    assert page.locator("#scorecard tbody tr").count() == 5
    assert "too few for percentiles" in page.locator("#norm-note").inner_text()
    assert page.locator("select[name=norm_country] option[value=DE]").inner_text() == "Germany (DE)"
    moments = page.locator("#moments tbody").inner_text()
    assert "p_adj" in moments or "No second stands out" in moments
    assert "prominence" in page.locator("#moment-rule").inner_text()

    # A new participant's frames are pushed to the open page (no reload).
    assert page.locator("#totals .card strong").first.inner_text() == "12"  # the excluded two have no frames
    writer = FrameWriter(new_participant(acme.study, "DE", state="completed"))
    from research_portal.capture.storage import store_results

    store_results([row for second in range(4) for row in writer.frames(acme.ad, second, [0.9, 0.9])])
    page.wait_for_function(
        "Number(document.getElementById('dashboard').dataset.liveUpdates || 0) >= 1", timeout=15_000
    )
    page.wait_for_function(
        "document.querySelector('#totals .card strong').textContent === '13'", timeout=15_000
    )

    # Clicking the chart at 2.5 s (the middle of second 2) seeks the video to second 2.
    page.wait_for_function("document.getElementById('ad-video').readyState >= 1", timeout=15_000)
    x, y = page.evaluate(
        """() => {
            const gd = document.getElementById('fig-trace');
            const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
            const xaxis = gd._fullLayout.xaxis;
            return [box.left + xaxis.l2p(2.5), box.top + box.height * 0.3];
        }"""
    )
    page.mouse.click(x, y)
    page.wait_for_function(
        "Math.abs(document.getElementById('ad-video').currentTime - 2) < 0.3", timeout=10_000
    )
    assert page.locator("#video-time").inner_text() == "2.0"
    cursor = page.evaluate("document.getElementById('fig-trace').layout.shapes.slice(-1)[0].x0")
    assert cursor == pytest.approx(2.0, abs=0.3)

    page.screenshot(path=ARTIFACTS / "analytics-ad-dashboard.png", full_page=True)

    # Filters recompute everything in place: baseline switch, small multiples, one device.
    rendered = int(page.evaluate("document.getElementById('dashboard').dataset.rendered"))
    page.check("input[name=baseline]")
    page.wait_for_function(f"Number(document.getElementById('dashboard').dataset.rendered) > {rendered}")
    title = page.evaluate("document.getElementById('fig-trace').layout.yaxis.title.text")
    assert "baseline" in title and "baseline=1" in page.url
    page.select_option("select[name=layout]", "multiples")
    page.wait_for_function("Boolean(document.getElementById('fig-countries').layout.xaxis3)")
    assert "layout=multiples" in page.locator("#exports a").first.get_attribute("href")
    assert page.locator("#exports a[href*='.parquet?']").count() == 4  # each export also as Parquet
    low, high = page.evaluate("document.getElementById('fig-countries')._fullLayout.yaxis.range")
    assert -0.5 < low < 0 < high < 1.5  # one shared range around the data (bands included)
    page.screenshot(path=ARTIFACTS / "analytics-ad-dashboard-baseline-multiples.png", full_page=True)
    page.goto(f"{asgi_server}/analytics/studies/{acme.study.pk}/")
    page.wait_for_selector("#fig-funnel .main-svg")
    assert {"Germany (DE)", "United States (US)", "Japan (JP)"} <= set(
        page.evaluate("document.getElementById('fig-funnel').data.map(t => t.name)")
    )
    funnel_table = page.locator("#funnel-table tbody").inner_text()
    assert "Germany (DE)" in funnel_table and "United States (US)" in funnel_table
    page.screenshot(path=ARTIFACTS / "analytics-study-overview.png", full_page=True)
    assert errors == []
    connections.close_all()  # opened under Playwright's greenlet context, which pytest-django cannot see


def test_analyst_of_another_organisation_cannot_open_it(acme, analysts, asgi_server, analyst_browser, client):
    page = signed_in_page(analyst_browser, client, analysts.other, asgi_server)
    response = page.goto(f"{asgi_server}/analytics/ads/{acme.ad.pk}/")
    assert response.status == 404  # another organisation's study does not exist for them
    closed = page.evaluate(
        """(url) => new Promise((resolve) => {
            const socket = new WebSocket(url);
            socket.onclose = (event) => resolve(event.code);
        })""",
        f"{asgi_server.replace('http', 'ws')}/ws/analytics/ads/{acme.ad.pk}/",
    )
    assert closed == 4004
    connections.close_all()


def test_an_open_dashboard_shows_who_is_watching_mid_ad(acme, analysts, asgi_server, analyst_browser, client):
    """A participant's frames, stored second by second while the ad plays, reach the open page within seconds
    as the provisional "Watching now" figures (analytics/provisional.py): the push does not wait for the
    rollups (production refreshes a session's every 30 s)."""
    from research_portal.capture.storage import store_results

    page = signed_in_page(analyst_browser, client, analysts.acme, asgi_server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{asgi_server}/analytics/ads/{acme.ad.pk}/")
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'open'", timeout=15_000)
    assert page.locator("#live-panel").is_hidden()  # nobody is watching yet

    writer = FrameWriter(new_participant(acme.study, "DE"))
    for second, smile in enumerate([0.3, 0.8]):  # the first two seconds of a four-second ad
        store_results(writer.frames(acme.ad, second, [smile, smile]))
        page.wait_for_function(
            f"(document.getElementById('fig-live').data || [{{x: []}}])[0].x.length === {second + 1}",
            timeout=5_000,
        )
    assert page.locator("#live-watching").inner_text() == "1"
    smile = page.evaluate("document.getElementById('fig-live').data.find(t => t.name === 'Smile').y")
    assert smile == pytest.approx([0.3, 0.8])
    page.screenshot(path=ARTIFACTS / "analytics-ad-watching-now.png", full_page=True)
    assert errors == []
    connections.close_all()


def test_analyst_compares_two_ads_from_the_ad_page(acme, analysts, asgi_server, analyst_browser, client):
    """From the Spring ad's page to ad vs ad: choose the Autumn ad (another study), see both traces with the
    tested difference and the scorecards side by side, then line them up by share of length."""
    ARTIFACTS.mkdir(exist_ok=True)
    seed(acme)
    for index in range(3):
        writer = FrameWriter(new_participant(acme.other_study, "DE", state="completed"))
        rows = [
            row for second in range(4) for row in writer.frames(acme.other_ad, second, [0.6 + 0.05 * index])
        ]
        from research_portal.capture.storage import store_results

        store_results(rows)
    page = signed_in_page(analyst_browser, client, analysts.acme, asgi_server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{asgi_server}/analytics/ads/{acme.ad.pk}/")
    page.click("#compare-ads")
    page.wait_for_selector("#compare-reason:not([hidden])")
    assert "Choose two ads" in page.locator("#compare-reason").inner_text()
    page.select_option("select[name=b]", str(acme.other_ad.pk))
    page.wait_for_selector("#fig-overlay .main-svg", timeout=20_000)
    page.wait_for_selector("#fig-difference .main-svg")
    names = page.evaluate("document.getElementById('fig-overlay').data.map(t => t.name)")
    assert {"A · Spring ad", "B · Autumn ad"} <= set(names)
    assert page.locator("#fig-overlay svg.main-svg .scatterlayer path.js-line").count() >= 2
    assert f"b={acme.other_ad.pk}" in page.url
    assert "Welch t-test of Smile by second" in page.locator("#comparison-note").inner_text()
    assert page.locator("#scorecards tbody tr").count() == 6  # five figures and n
    assert page.locator("#summary tbody tr").count() == 2
    assert page.locator("#tests tbody tr").count() == 4
    page.screenshot(path=ARTIFACTS / "analytics-ad-vs-ad.png", full_page=True)

    rendered = int(page.evaluate("document.getElementById('dashboard').dataset.rendered"))
    page.select_option("select[name=axis]", "share")
    page.wait_for_function(f"Number(document.getElementById('dashboard').dataset.rendered) > {rendered}")
    title = page.evaluate("document.getElementById('fig-overlay').layout.xaxis.title.text")
    assert title == "Share of the ad's length (%)" and "axis=share" in page.url
    assert "axis=share" in page.locator("#exports a").first.get_attribute("href")
    page.select_option("select[name=measure]", "valence")
    page.wait_for_function("document.getElementById('comparison-note').textContent.includes('Valence')")
    assert errors == []
    connections.close_all()
