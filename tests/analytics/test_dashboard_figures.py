"""What the dashboards' figures and payloads show beyond the numbers: smile shown once (not again as
happiness), whole-number participant axes, small multiples whose cursor stays in its panel and whose panel
titles have room of their own, countries named beside their codes. (Durations in seconds: the ad page's
"Ad length" card, tests/analytics/test_dashboard_browser.py.)"""

from __future__ import annotations

import pytest

from research_portal.analytics.dashboard import build_ad_dashboard, build_study_overview
from research_portal.analytics.figures import PANEL_GAP_PX, count_step
from research_portal.analytics.services import parse_filters
from research_portal.studies.models import CountryQuota
from tests.support.readings import FrameWriter, new_participant


def dashboard(acme, **query) -> dict:
    return build_ad_dashboard(acme.ad, parse_filters(query))


def test_smile_is_shown_once_not_again_as_happiness(hand_fixture):
    payload = dashboard(hand_fixture)
    names = {trace["name"] for trace in payload["figures"]["trace"]["data"]}
    assert "Smile" in names and "Happiness" not in names and "Happiness 95% CI" not in names
    measures = [measure for measure, _label in payload["options"]["measures"]]
    assert "smile" in measures and "happy" not in measures and "sad" in measures
    # An old link asking for happiness compares smiles: the same number.
    assert dashboard(hand_fixture, measure="happy")["filters"]["measure"] == "smile"


@pytest.mark.parametrize(
    ("most", "step"), [(0, 1), (3, 1), (5, 1), (6, 2), (12, 5), (40, 10), (66_667, 20_000)]
)
def test_count_steps_are_whole_numbers(most, step):
    assert count_step(most) == step


def test_participant_axes_have_whole_number_ticks(hand_fixture):
    n_axis = dashboard(hand_fixture)["figures"]["trace"]["layout"]["yaxis2"]
    # 3 participants at most, three ticks: a step of 1, never 0.5.
    assert (n_axis["tickformat"], n_axis["tick0"], n_axis["dtick"], n_axis["rangemode"]) == (
        "d",
        0,
        1,
        "tozero",
    )
    CountryQuota.objects.create(study=hand_fixture.study, country="DE", target=40)
    figures = build_study_overview(hand_fixture.study, parse_filters({}))["figures"]
    funnel, quotas = figures["funnel"]["layout"]["yaxis"], figures["quotas"]["layout"]["xaxis"]
    assert (funnel["tickformat"], funnel["dtick"]) == ("d", 1)  # 2 started in DE at most
    assert (quotas["tickformat"], quotas["dtick"]) == ("d", 10)  # target 40


@pytest.fixture
def four_countries(acme):
    for country in ("BR", "DE", "JP", "US"):
        writer = FrameWriter(new_participant(acme.study, country))
        for second in range(3):
            writer.store(acme.ad, second, [0.3, 0.5])
    return acme


def test_small_multiples_keep_the_cursor_in_each_panel_and_titles_clear_of_axes(four_countries):
    layout = dashboard(four_countries, layout="multiples")["figures"]["countries"]["layout"]
    # Four panels on a 3-column grid: BR DE JP in row one, US alone in row two (two empty cells).
    assert layout["meta"]["cursors"] == [
        {"xref": "x", "yref": "y domain"},
        {"xref": "x2", "yref": "y2 domain"},
        {"xref": "x3", "yref": "y3 domain"},
        {"xref": "x4", "yref": "y4 domain"},
    ]
    # Tick labels and the time title only under the lowest panel of each column (BR has US below it).
    lowest = {name: layout[name]["showticklabels"] for name in ("xaxis", "xaxis2", "xaxis3", "xaxis4")}
    assert lowest == {"xaxis": False, "xaxis2": True, "xaxis3": True, "xaxis4": True}
    assert layout["xaxis"]["title"]["text"] == "" and layout["xaxis4"]["title"]["text"] == "Time in ad (s)"
    # The rows are PANEL_GAP_PX apart: room for US's title under BR's panel, which draws no tick labels there.
    plot_px = layout["height"] - layout["margin"]["t"] - layout["margin"]["b"]
    gap = (layout["yaxis"]["domain"][0] - layout["yaxis4"]["domain"][1]) * plot_px
    assert gap == pytest.approx(PANEL_GAP_PX, abs=0.01) and PANEL_GAP_PX >= 40
    titles = [(a["text"], a["yref"], a["y"], a["yanchor"]) for a in layout["annotations"]]
    assert titles[3] == ("<b>United States (US)</b>", "y4 domain", 1.0, "bottom")
    # The overlay and the trace chart keep one cursor over the whole plot.
    assert dashboard(four_countries)["figures"]["trace"]["layout"]["meta"]["cursors"] == [
        {"xref": "x", "yref": "paper"}
    ]


def test_countries_are_named_beside_their_codes(four_countries):
    payload = dashboard(four_countries, compare=["DE", "US"])
    title = payload["figures"]["countries"]["layout"]["title"]
    assert title["text"] == "Smile by country"
    assert title["subtitle"]["text"].startswith("shaded: Germany (DE) vs United States (US) differ")
    difference = payload["figures"]["difference"]["layout"]["title"]
    assert difference["text"] == "Difference Germany (DE) − United States (US) per second"
    assert difference["subtitle"]["text"].startswith("Welch t-test")
    assert payload["country_labels"]["BR"] == "Brazil (BR)"


def test_every_figure_is_a_valid_plotly_figure(four_countries):
    """plotly.graph_objects refuses any property plotly.js does not know (the dicts are built by hand)."""
    import plotly.graph_objects as go

    CountryQuota.objects.create(study=four_countries.study, country="DE", target=3)
    figures = [
        *dashboard(four_countries, compare=["DE", "US"], layout="multiples")["figures"].values(),
        *dashboard(four_countries, compare=["DE", "US"])["figures"].values(),
        *build_study_overview(four_countries.study, parse_filters({}))["figures"].values(),
    ]
    for figure in figures:
        go.Figure(figure)
