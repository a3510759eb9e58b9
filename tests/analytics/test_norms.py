"""An ad's scorecard and its percentiles against the organisation's norm (analytics/norms.py), computed from
the participants' summaries: hand-worked figures, the norm's rules (same model, enough participants and ads,
same organisation, country and category), and the dashboard that shows it."""

from __future__ import annotations

import datetime

import pytest

from research_portal.analytics.models import ParticipantAdSummary
from research_portal.analytics.norms import NORM_MIN_ADS, NORM_MIN_PARTICIPANTS, build_scorecard, percentile
from research_portal.studies.models import Ad, Study
from tests.support.readings import MODEL, new_participant

DAY = datetime.date(2026, 1, 5)


def new_ad(study, title: str, category: str = "") -> Ad:
    return Ad.objects.create(
        study=study, title=title, video="ads/x.webm", duration_ms=4000, category=category
    )


def summaries(
    ad, n: int, valence: float, *, smiled: int = 0, country: str = "DE", model: str = MODEL, **extra
):
    """n validated participants of `ad` with the given whole-ad figures (`smiled` of them smiled)."""
    for index in range(n):
        session = new_participant(ad.study, country, state="completed")
        ParticipantAdSummary.objects.create(
            session=session,
            ad=ad,
            level=0,
            model_version=model,
            country=country,
            device_type="desktop",
            completed=True,
            day=DAY,
            n_seconds=extra.get("n_seconds", 4),
            n_frames=20,
            mean_valence=valence,
            peak_smile=extra.get("peak_smile", 0.5),
            smiled=index < smiled,
            mean_expressiveness=extra.get("expressiveness", 0.4),
            mean_attention=extra.get("attention", 0.9),
        )


def test_percentile_counts_ties_half():
    import numpy as np

    others = np.array([0.1, 0.2, 0.3, 0.4])
    assert percentile(0.35, others) == 75.0
    assert percentile(0.3, others) == 62.5  # 2 below + half of 1 tie, of 4
    assert percentile(0.05, others) == 0.0 and percentile(None, others) is None
    assert percentile(0.2, np.array([np.nan, 0.1])) == 100.0  # an ad without the figure is left out


@pytest.mark.django_db
def test_the_scorecard_ranks_each_figure_in_the_norm(acme):
    """Six other ads of Acme, mean valence 0.1 .. 0.6; this ad 0.35 (3 of 6 below: the 50th percentile)."""
    for index in range(6):
        summaries(new_ad(acme.study, f"norm {index}"), NORM_MIN_PARTICIPANTS, 0.1 * (index + 1), smiled=index)
    summaries(acme.ad, NORM_MIN_PARTICIPANTS, 0.35, smiled=4, attention=0.5, expressiveness=0.7)
    # One participant without a usable reading: outside n and the reading figures, inside attention (0).
    summaries(acme.ad, 1, None, n_seconds=0, attention=0.0, expressiveness=None, peak_smile=None)

    card = build_scorecard(acme.ad, MODEL)
    figures = {figure.key: figure for figure in card.figures}
    assert card.n == NORM_MIN_PARTICIPANTS and card.norm.ads == 6 and card.norm.enough
    assert figures["valence"].value == pytest.approx(0.35) and figures["valence"].percentile == 50.0
    # smiled: 4 of the 10 with a reading; the norm's ads 0.0 .. 0.5: 4 below, one tie (0.4)
    assert figures["smiled"].value == pytest.approx(0.4) and figures["smiled"].percentile == pytest.approx(
        75.0
    )
    assert figures["attention"].value == pytest.approx(10 * 0.5 / 11, abs=1e-4)  # everyone analysed counts
    assert figures["attention"].percentile == 0.0  # every other ad: 0.9
    assert (
        figures["expressiveness"].value == pytest.approx(0.7) and figures["expressiveness"].percentile == 100
    )
    assert "6 other ads" in card.norm.description and card.to_json()["norm"]["min_ads"] == NORM_MIN_ADS


@pytest.mark.django_db
def test_the_norm_holds_comparable_ads_only(acme):
    """Ads in the norm: the organisation's own, read by the same model, with enough validated participants;
    with fewer than NORM_MIN_ADS of them the scorecard says so instead of ranking."""
    for index in range(NORM_MIN_ADS - 1):
        summaries(new_ad(acme.study, f"norm {index}"), NORM_MIN_PARTICIPANTS, 0.2)
    summaries(new_ad(acme.study, "too few participants"), NORM_MIN_PARTICIPANTS - 1, 0.9)
    summaries(new_ad(acme.study, "another model"), NORM_MIN_PARTICIPANTS, 0.9, model="other-model")
    from research_portal.accounts.models import Organization

    rival = Study.objects.create(organization=Organization.objects.create(name="Rival"), name="Theirs")
    summaries(new_ad(rival, "a rival's ad"), NORM_MIN_PARTICIPANTS, 0.9)
    summaries(acme.ad, NORM_MIN_PARTICIPANTS, 0.5)

    card = build_scorecard(acme.ad, MODEL)
    assert card.norm.ads == NORM_MIN_ADS - 1 and not card.norm.enough
    assert all(figure.percentile is None for figure in card.figures)
    assert card.figures[0].value == pytest.approx(0.5)  # the figures themselves are still shown
    assert "too few for percentiles" in card.norm.description

    summaries(new_ad(acme.study, "one more"), NORM_MIN_PARTICIPANTS, 0.2)
    card = build_scorecard(acme.ad, MODEL)
    assert card.norm.enough and card.figures[0].percentile == 100.0


@pytest.mark.django_db
def test_the_norm_can_be_one_country_or_one_category(acme):
    for index in range(NORM_MIN_ADS):
        ad = new_ad(acme.study, f"snack {index}", category="snacks")
        summaries(ad, NORM_MIN_PARTICIPANTS, 0.2, country="DE")
        summaries(ad, NORM_MIN_PARTICIPANTS, 0.8, country="US")
    for index in range(NORM_MIN_ADS):
        summaries(
            new_ad(acme.study, f"car {index}", category="cars"), NORM_MIN_PARTICIPANTS, 0.6, country="DE"
        )
    summaries(acme.ad, NORM_MIN_PARTICIPANTS, 0.4, country="DE")
    summaries(acme.ad, NORM_MIN_PARTICIPANTS, 0.7, country="US")

    everyone = build_scorecard(acme.ad, MODEL)
    assert everyone.n == 2 * NORM_MIN_PARTICIPANTS and everyone.norm.ads == 2 * NORM_MIN_ADS
    assert everyone.figures[0].value == pytest.approx(0.55)
    germany = build_scorecard(acme.ad, MODEL, country="DE")
    assert germany.n == NORM_MIN_PARTICIPANTS and germany.figures[0].value == pytest.approx(0.4)
    assert germany.figures[0].percentile == 50.0  # above the snacks' 0.2, below the cars' 0.6
    snacks = build_scorecard(acme.ad, MODEL, country="DE", category="snacks")
    assert snacks.norm.ads == NORM_MIN_ADS and snacks.figures[0].percentile == 100.0
    assert "snacks" in snacks.norm.description and "Germany (DE)" in snacks.norm.description
    us_snacks = build_scorecard(acme.ad, MODEL, country="US", category="snacks")
    assert us_snacks.figures[0].percentile == 0.0  # 0.7 against the snacks' 0.8 in the US


@pytest.mark.django_db
def test_the_dashboard_carries_the_scorecard_and_refuses_bad_norm_filters(client, hand_fixture, analysts):
    """From the rollups of real readings (the hand fixture: P1 and P2 validated, P3 still viewing)."""
    client.force_login(analysts.acme)
    acme = hand_fixture
    acme.ad.category = "spring"
    acme.ad.save()
    url = f"/analytics/ads/{acme.ad.pk}/data.json"
    data = client.get(url).json()
    card = data["scorecard"]
    assert card["n"] == 2 and card["model_version"] == MODEL and card["norm"]["ads"] == 0
    rows = ParticipantAdSummary.objects.filter(ad=acme.ad, level=0, completed=True)
    expected = sum(row.mean_valence for row in rows) / 2
    assert card["figures"][0]["value"] == pytest.approx(expected, abs=1e-4)
    assert data["options"]["norm_categories"] == ["spring"]
    assert client.get(url, {"norm_country": "DE", "norm_category": "spring"}).json()["scorecard"]["n"] == 2
    for bad in ({"norm_country": "D1"}, {"norm_category": "x" * 61}, {"norm_country": ["DE", "US"]}):
        response = client.get(url, bad)
        assert response.status_code == 400 and "error" in response.json()
