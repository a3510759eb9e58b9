"""Ad vs ad (analytics/ad_comparison.py): two ads' traces lined up by second or by share of length, the
per-position Welch test against scipy on the participants' own values, the side-by-side scorecards, the
model-version rule, the export, and who may compare what."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from django.http import QueryDict
from django.urls import reverse
from scipy import stats as scipy_stats

from research_portal.accounts.models import Organization
from research_portal.analytics.ad_comparison import (
    at_seconds,
    build_ad_comparison,
    parse_ad_pair_query,
    positions,
)
from research_portal.analytics.services import InvalidFilters
from research_portal.analytics.stats import benjamini_hochberg, estimate_means, holm
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad, Study
from tests.support.readings import FrameWriter, new_participant

# Per participant, their smile in seconds 0 and 1 (one frame each: the participant-second mean is the value).
SMILES_A = [(0.2, 0.1), (0.4, 0.3), (0.6, 0.2)]
SMILES_B = [(0.5, 0.8), (0.7, 0.9)]


def watch(ad, smiles_per_participant, country: str = "DE", model: str | None = None) -> list:
    sessions = []
    for smiles in smiles_per_participant:
        session = new_participant(ad.study, country, state="completed")
        writer = FrameWriter(session)
        for second, smile in enumerate(smiles):
            writer.store(ad, second, [smile], **({"model": model} if model else {}))
        sessions.append(session)
    return sessions


def set_length(ad, seconds: int) -> None:
    Ad.objects.filter(pk=ad.pk).update(duration_ms=seconds * 1000)
    ad.refresh_from_db()


def compare(ad_a, ad_b, **query) -> dict:
    params = QueryDict(mutable=True)
    params.update({"a": str(ad_a.pk), "b": str(ad_b.pk), **query})
    return build_ad_comparison(ad_a, ad_b, parse_ad_pair_query(params))


@pytest.fixture
def two_ads(acme):
    """Acme's Spring ad (A, 3 participants) and its Autumn ad of another study (B, 2), both 2 s long."""
    set_length(acme.ad, 2)
    set_length(acme.other_ad, 2)
    watch(acme.ad, SMILES_A)
    watch(acme.other_ad, SMILES_B)
    return acme


@pytest.mark.django_db
def test_each_second_is_a_welch_test_of_the_participants_values(two_ads):
    payload = compare(two_ads.ad, two_ads.other_ad, measure="smile")
    assert payload["comparable"] and payload["axis"] == "second"
    rows = payload["comparison"]["rows"]
    assert [row["label"] for row in rows] == ["0–1 s", "1–2 s"]
    p_values = []
    for second, row in enumerate(rows):
        a = [smiles[second] for smiles in SMILES_A]
        b = [smiles[second] for smiles in SMILES_B]
        expected = scipy_stats.ttest_ind(a, b, equal_var=False)
        assert (row["n_a"], row["n_b"]) == (3, 2)
        assert row["mean_a"] == pytest.approx(np.mean(a)) and row["mean_b"] == pytest.approx(np.mean(b))
        assert row["difference"] == pytest.approx(np.mean(a) - np.mean(b))
        assert row["t"] == pytest.approx(expected.statistic, abs=1e-6)
        assert row["p"] == pytest.approx(expected.pvalue, abs=1e-6)
        p_values.append(expected.pvalue)
    adjusted = benjamini_hochberg(np.array(p_values))
    assert [row["p_adjusted"] for row in rows] == pytest.approx(list(adjusted), abs=1e-6)
    # Second 1: 0.2 vs 0.85 with small spreads: p ~ 0.003, still < 0.05 after BH over two seconds.
    assert payload["comparison"]["significant_positions"] == [1]
    assert rows[1]["significant"] and not rows[0]["significant"]

    holm_rows = compare(two_ads.ad, two_ads.other_ad, correction="holm")["comparison"]["rows"]
    assert [row["p_adjusted"] for row in holm_rows] == pytest.approx(list(holm(np.array(p_values))), abs=1e-6)


@pytest.mark.django_db
def test_the_overlay_and_difference_figures_carry_both_ads(two_ads):
    payload = compare(two_ads.ad, two_ads.other_ad)
    overlay, difference = payload["figures"]["overlay"], payload["figures"]["difference"]
    names = [trace["name"] for trace in overlay["data"] if "customdata" in trace]
    assert names == ["A · Spring ad", "B · Autumn ad"]
    assert overlay["layout"]["xaxis"]["title"]["text"] == "Time in ad (s)"
    shaded = [(shape["x0"], shape["x1"]) for shape in overlay["layout"]["shapes"]]
    assert shaded == [(1, 2)]  # the significant second
    line = next(trace for trace in difference["data"] if trace.get("mode") == "lines+markers")
    assert line["y"] == pytest.approx([0.4 - 0.6, 0.2 - 0.85])


@pytest.mark.django_db
def test_by_share_of_length_lines_up_ads_of_different_lengths(acme):
    """A: 4 s, B: 8 s. Four shares of 25 %: their middles (12.5 %, 37.5 % ...) fall in A's seconds 0-3 and
    B's seconds 1, 3, 5, 7."""
    set_length(acme.ad, 4)
    set_length(acme.other_ad, 8)
    watch(acme.ad, [(0.1, 0.2, 0.3, 0.4), (0.3, 0.4, 0.5, 0.6)])
    watch(acme.other_ad, [(0.0, 0.7, 0.0, 0.6, 0.0, 0.5, 0.0, 0.4)] * 2)
    payload = compare(acme.ad, acme.other_ad, axis="share")
    rows = payload["comparison"]["rows"]
    assert [(row["second_a"], row["second_b"]) for row in rows] == [(0, 1), (1, 3), (2, 5), (3, 7)]
    assert [row["label"] for row in rows] == ["0.0–25.0 %", "25.0–50.0 %", "50.0–75.0 %", "75.0–100.0 %"]
    assert [row["mean_a"] for row in rows] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert [row["mean_b"] for row in rows] == pytest.approx([0.7, 0.6, 0.5, 0.4])
    # B's two participants read the same: no variance, but A's has some, so every share is testable.
    assert all(row["p"] is not None for row in rows)
    overlay = payload["figures"]["overlay"]
    assert overlay["layout"]["xaxis"]["range"] == [0, 100]
    assert next(t for t in overlay["data"] if "customdata" in t)["x"] == [12.5, 37.5, 62.5, 87.5]

    by_second = compare(acme.ad, acme.other_ad)["comparison"]["rows"]
    assert len(by_second) == 8  # the longer ad's seconds are shown...
    assert [row["n_a"] for row in by_second[4:]] == [0] * 4  # ...A has none there...
    assert all(row["p"] is None and not row["significant"] for row in by_second[4:])  # ...and untested


def test_positions_and_their_seconds():
    share = positions(3, 10, "share")
    assert share.second_a.tolist() == [0, 1, 2] and share.second_b.tolist() == [1, 5, 8]
    assert share.step == pytest.approx(100 / 3)
    second = positions(2, 3, "second")
    assert second.second_a.tolist() == [0, 1, -1] and second.second_b.tolist() == [0, 1, 2]
    estimate = estimate_means([2, 3], [1.0, 1.5], [0.6, 0.9])
    picked = at_seconds(estimate, np.array([1, -1, 0]))
    assert picked.n.tolist() == [3, 0, 2]
    assert picked.mean[0] == pytest.approx(0.5) and np.isnan(picked.mean[1])


@pytest.mark.django_db
def test_scorecards_and_whole_ad_figures_side_by_side(two_ads):
    payload = compare(two_ads.ad, two_ads.other_ad)
    card_a, card_b = payload["scorecards"]
    assert (card_a["ad"], card_b["ad"]) == (two_ads.ad.pk, two_ads.other_ad.pk)
    assert (card_a["n"], card_b["n"]) == (3, 2)
    assert [figure["key"] for figure in card_a["figures"]] == [figure["key"] for figure in card_b["figures"]]
    summary_a, summary_b = payload["summaries"]
    assert (summary_a["participants"], summary_b["participants"]) == (3, 2)
    valence_a = np.mean([np.mean([2 * s - 1 for s in smiles]) for smiles in SMILES_A])
    assert summary_a["mean_valence"] == pytest.approx(valence_a, abs=1e-4)
    assert payload["shared_participants"] == 0  # different studies, different people


@pytest.mark.django_db
def test_participants_who_watched_both_ads_are_counted(acme):
    second = Ad.objects.create(study=acme.study, title="Second spot", video="ads/x.webm", duration_ms=2000)
    set_length(acme.ad, 2)
    both = watch(acme.ad, SMILES_A)
    for session, smiles in zip(both[:2], SMILES_B, strict=True):
        writer = FrameWriter(session)
        writer.seq = 100
        for index, smile in enumerate(smiles):
            writer.store(second, index, [smile])
    payload = compare(acme.ad, second)
    assert payload["shared_participants"] == 2
    assert payload["comparison"]["rows"][0]["n_b"] == 2


@pytest.mark.django_db
def test_ads_read_by_different_models_are_not_compared(acme):
    watch(acme.ad, SMILES_A, model="model-x")
    watch(acme.other_ad, SMILES_B, model="model-y")
    payload = compare(acme.ad, acme.other_ad)
    assert not payload["comparable"] and "different model versions" in payload["reason"]
    assert "figures" not in payload

    watch(acme.other_ad, SMILES_B, model="model-x")  # now both have model-x
    payload = compare(acme.ad, acme.other_ad, model="model-y")  # not A's: the common one is used
    assert payload["comparable"] and payload["model_version"] == "model-x"
    assert payload["comparison"]["rows"][0]["n_b"] == 2  # only model-x's readings of B


@pytest.mark.django_db
def test_an_ad_without_readings_says_so(acme):
    watch(acme.ad, SMILES_A)
    payload = compare(acme.ad, acme.other_ad)
    assert not payload["comparable"] and payload["reason"] == "No readings of B · Autumn ad yet."


@pytest.mark.parametrize(
    "query, message",
    [
        ({"a": "1", "b": "1"}, "two different ads"),
        ({"a": "x"}, "Ad A must be an ad's number"),
        ({"a": "1", "b": "9" * 13}, "Ad B must be an ad's number"),
        ({"axis": "minutes"}, "Axis must be second or share"),
        ({"measure": "joy"}, "Measure must be one of"),
    ],
)
def test_bad_comparison_queries_are_refused(query, message):
    params = QueryDict(mutable=True)
    params.update(query)
    with pytest.raises(InvalidFilters, match=message):
        parse_ad_pair_query(params)


# ---- pages, data, export, access --------------------------------------------------------------------------


def urls(acme) -> list[str]:
    query = f"?a={acme.ad.pk}&b={acme.other_ad.pk}"
    return [
        reverse("analytics:compare") + query,
        reverse("analytics:compare-data") + query,
        reverse("analytics:compare-export") + query,
        reverse("analytics:compare-export-parquet") + query,
    ]


@pytest.mark.django_db
def test_an_analyst_compares_ads_of_two_studies(client, analysts, two_ads):
    client.force_login(analysts.acme)
    page = client.get(urls(two_ads)[0])
    assert page.status_code == 200 and b'data-kind="compare"' in page.content
    choices = json.loads(
        page.content.split(b'id="compare-choices" type="application/json">')[1].split(b"<")[0]
    )
    assert {choice["label"] for choice in choices} == {
        "Spring campaign › Spring ad",
        "Autumn campaign › Autumn ad",
    }
    data = client.get(urls(two_ads)[1] + "&axis=share&measure=valence")
    assert data.status_code == 200
    assert data.json()["comparison"]["measure"] == "valence" and data.json()["filters"]["axis"] == "share"


@pytest.mark.django_db
def test_the_pages_link_to_the_comparison(client, analysts, two_ads):
    client.force_login(analysts.acme)
    ad_page = client.get(reverse("analytics:ad", args=[two_ads.ad.pk])).content.decode()
    assert f'{reverse("analytics:compare")}?a={two_ads.ad.pk}"' in ad_page
    Ad.objects.create(study=two_ads.study, title="Second spot", video="ads/x.webm", duration_ms=2000)
    study_page = client.get(reverse("analytics:study", args=[two_ads.study.pk])).content.decode()
    assert 'id="compare-link"' in study_page


@pytest.mark.django_db
def test_a_page_with_one_ad_offers_the_choice(client, analysts, acme):
    client.force_login(analysts.acme)
    page = client.get(reverse("analytics:compare") + f"?a={acme.ad.pk}")
    assert page.status_code == 200 and b"Choose two ads to compare." in page.content
    assert client.get(reverse("analytics:compare")).status_code == 200


@pytest.mark.django_db
def test_the_export_has_the_pages_rows_in_csv_and_parquet(client, analysts, two_ads):
    client.force_login(analysts.acme)
    csv_url, parquet_url = urls(two_ads)[2:]
    response = client.get(csv_url)
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith(
        f'filename="ads-{two_ads.ad.pk}-vs-{two_ads.other_ad.pk}-comparison.csv"'
    )
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header = lines[0]
    assert header[:3] == ["ad_a_id", "ad_a_title", "ad_b_id"] and len(lines) == 3
    second_1 = dict(zip(header, lines[2], strict=True))
    assert second_1["significant"] == "1" and second_1["model_version"] == "test-model-1"
    table = pq.read_table(io.BytesIO(b"".join(client.get(parquet_url).streaming_content)))
    assert table.num_rows == 2 and table.column("n_a").to_pylist() == [3, 3]
    assert table.schema.metadata[b"axis"] == b"second"
    assert AuditLog.objects.filter(action=AuditLog.Action.EXPORT, detail__export="ad-comparison").count() == 2


@pytest.mark.django_db
def test_only_the_organisations_analysts_compare_its_ads(client, analysts, two_ads):
    for url in urls(two_ads):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    client.force_login(analysts.other)  # Charlie, of Rival Insights
    for url in urls(two_ads):
        assert client.get(url).status_code == 404, url


@pytest.mark.django_db
def test_ads_of_two_organisations_cannot_be_compared(client, analysts, two_ads):
    rival = Organization.objects.get(name="Rival Insights")
    study = Study.objects.create(organization=rival, name="Rival study", status=Study.Status.LIVE)
    theirs = Ad.objects.create(study=study, title="Rival ad", video="ads/x.webm", duration_ms=2000)
    client.force_login(analysts.admin)  # staff sees both organisations
    query = f"?a={two_ads.ad.pk}&b={theirs.pk}"
    page = client.get(reverse("analytics:compare") + query)
    assert page.status_code == 400 and b"same organisation" in page.content
    data = client.get(reverse("analytics:compare-data") + query)
    assert data.status_code == 400 and "same organisation" in data.json()["error"]
    client.force_login(analysts.acme)  # Bob cannot see the rival's ad at all
    assert client.get(reverse("analytics:compare") + query).status_code == 404


@pytest.mark.django_db
def test_the_export_needs_two_ads(client, analysts, acme):
    client.force_login(analysts.acme)
    response = client.get(reverse("analytics:compare-export") + f"?a={acme.ad.pk}")
    assert response.status_code == 400 and b"Choose two ads" in response.content
