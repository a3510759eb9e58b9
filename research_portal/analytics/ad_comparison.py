"""Two ads compared (docs/analytics.md, "Ad vs ad"): within a study or across an organisation's studies, one
measure's traces overlaid, the difference tested per position (Welch, BH or Holm, as the country
comparison), and the two scorecards side by side. Computed from the rollups only, like the ad dashboard.

Positions: by second, second i of one ad against second i of the other (the longer ad's extra seconds are
shown but untested); or by share of the ads' lengths, where the shorter ad's K seconds set K equal shares
and each share compares the second of each ad that holds the share's middle. Each test uses one cell of
each ad, so the participant stays the unit and the Welch test of the country comparison applies unchanged.

Readings of different model versions are never compared: both ads are read by one version they share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
from django.db.models import QuerySet
from django.http import QueryDict
from django.urls import reverse

from research_portal.analytics.dashboard import (
    ALL,
    CORRECTION_LABELS,
    AdFacets,
    PerSecondComparison,
    ad_facets,
    comparable_measures,
    compare_per_second,
    country_summary,
    filter_dimensions,
    load_traces,
    shown_measures,
)
from research_portal.analytics.definitions import ATTENTION, MEASURE_LABELS, QUALITY_LEVELS, SMILE_THRESHOLD
from research_portal.analytics.figures import SHARE_AXIS, TIME_AXIS, difference_figure, pair_figure
from research_portal.analytics.models import ParticipantAdSummary
from research_portal.analytics.norms import build_scorecard
from research_portal.analytics.services import Filters, InvalidFilters, parse_filters
from research_portal.analytics.stats import MeanEstimate
from research_portal.countries import country_labels
from research_portal.studies.models import Ad

AXES = {"second": "by second", "share": "by share of the ad's length"}
AD_COLORS = ("#1F77B4", "#D62728")  # ad A, ad B (the first two country colours: colour-blind safe)
MAX_AD_ID_DIGITS = 12


@dataclass(frozen=True)
class AdPairQuery:
    """What the comparison page asks for: two ads (either may still be unchosen), the axis, the filters that
    apply to both."""

    ad_a: int | None
    ad_b: int | None
    axis: str
    filters: Filters

    def to_query(self) -> dict[str, object]:
        ads = {"a": self.ad_a, "b": self.ad_b}
        return {
            **{key: str(ad) for key, ad in ads.items() if ad},
            "axis": self.axis,
            **self.filters.to_query(),
        }


def _ad_id(query: QueryDict, name: str) -> int | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise InvalidFilters(f"{name} may be given once.")
    value = (values[0] if values else "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > MAX_AD_ID_DIGITS:
        raise InvalidFilters(f"Ad {name.upper()} must be an ad's number.")
    return int(value)


def parse_ad_pair_query(query: QueryDict) -> AdPairQuery:
    """The comparison's parameters (a, b, axis) and the dashboard filters; InvalidFilters with a readable
    message for anything the page does not offer."""
    filters = parse_filters(query)
    ad_a, ad_b = _ad_id(query, "a"), _ad_id(query, "b")
    if ad_a is not None and ad_a == ad_b:
        raise InvalidFilters("Choose two different ads to compare.")
    axes = query.getlist("axis")
    if len(axes) > 1:
        raise InvalidFilters("axis may be given once.")
    axis = axes[0] if axes and axes[0] else "second"
    if axis not in AXES:
        raise InvalidFilters("Axis must be second or share.")
    return AdPairQuery(ad_a=ad_a, ad_b=ad_b, axis=axis, filters=filters)


def check_comparable_ads(ad_a: Ad, ad_b: Ad) -> None:
    """Ads of one organisation only: its ads share its participants' panels and its norms."""
    if ad_a.study.organization_id != ad_b.study.organization_id:
        raise InvalidFilters("Only ads of the same organisation can be compared.")


def ad_choices(ads: QuerySet[Ad]) -> list[dict]:
    """The ads a viewer may pick from (the view passes those it may see), by study."""
    return [
        {"id": ad.pk, "label": f"{ad.study.name} › {ad.title}", "study": ad.study_id}
        for ad in ads.select_related("study").order_by("study__name", "study_id", "position", "id")
    ]


def common_model_version(facets_a: AdFacets, facets_b: AdFacets, requested: str) -> str | None:
    """The model version both ads were read by: the requested one if both have it, else the one with the
    most participant-seconds across the two; None when they share none."""
    used_a, used_b = dict(facets_a.model_versions), dict(facets_b.model_versions)
    common = [version for version in used_a if version in used_b]
    if requested in common:
        return requested
    if not common:
        return None
    return min(common, key=lambda version: (-(used_a[version] + used_b[version]), version))


@dataclass(frozen=True)
class Positions:
    """Where the two ads are compared: per position, the second of each ad (-1: the ad has none there)."""

    second_a: np.ndarray
    second_b: np.ndarray
    x: list[float]  # each position's middle on the chart's axis
    step: float  # a position's width on that axis
    x_title: str
    x_range: list[float]
    labels: list[str]


def positions(seconds_a: int, seconds_b: int, axis: str) -> Positions:
    """The positions of module docstring: seconds (max(a, b) of them), or the shorter ad's count of equal
    shares of each ad's length."""
    if axis == "second":
        count = max(seconds_a, seconds_b)
        index = np.arange(count)
        return Positions(
            second_a=np.where(index < seconds_a, index, -1),
            second_b=np.where(index < seconds_b, index, -1),
            x=[second + 0.5 for second in range(count)],
            step=1.0,
            x_title=TIME_AXIS,
            x_range=[0, float(count)],
            labels=[f"{second}–{second + 1} s" for second in range(count)],
        )
    count = max(min(seconds_a, seconds_b), 1)
    middles = (np.arange(count) + 0.5) / count
    step = 100.0 / count
    return Positions(
        second_a=np.minimum(np.floor(middles * seconds_a), seconds_a - 1).astype(int),
        second_b=np.minimum(np.floor(middles * seconds_b), seconds_b - 1).astype(int),
        x=[round(100 * middle, 6) for middle in middles],
        step=step,
        x_title=SHARE_AXIS,
        x_range=[0, 100],
        labels=[f"{k * step:.1f}–{(k + 1) * step:.1f} %" for k in range(count)],
    )


def at_seconds(estimate: MeanEstimate, seconds: np.ndarray) -> MeanEstimate:
    """The estimate's elements at `seconds`, in that order; n = 0 and NaN where a second is -1."""
    present = seconds >= 0
    index = np.where(present, seconds, 0)

    def pick(values: np.ndarray, missing: float) -> np.ndarray:
        return np.where(present, values[index], missing)

    return MeanEstimate(
        n=pick(estimate.n, 0.0),
        **{name: pick(getattr(estimate, name), np.nan) for name in ("mean", "sd", "se", "low", "high")},
    )


def shared_participants(ad_a: Ad, ad_b: Ad, filters: Filters, model_version: str) -> int:
    """Participants with a reading of both ads (the same session saw both, within a study)."""
    read = ParticipantAdSummary.objects.filter(n_seconds__gt=0)
    of_b = filter_dimensions(read.filter(ad=ad_b), filters, model_version).values("session_id")
    return filter_dimensions(read.filter(ad=ad_a), filters, model_version).filter(session_id__in=of_b).count()


def ad_json(ad: Ad, letter: str) -> dict:
    return {
        "id": ad.pk,
        "letter": letter,
        "title": ad.title,
        "name": f"{letter} · {ad.title}",
        "duration_s": ad.duration_ms / 1000,
        "url": reverse("analytics:ad", args=[ad.pk]),
        "study": {"id": ad.study_id, "name": ad.study.name},
        "color": AD_COLORS[0 if letter == "A" else 1],
    }


def comparison_json(comparison: PerSecondComparison, where: Positions) -> dict:
    rows = comparison.rows()
    for row in rows:
        index = row.pop("second")
        second_a, second_b = int(where.second_a[index]), int(where.second_b[index])
        row |= {
            "position": index,
            "label": where.labels[index],
            "second_a": second_a if second_a >= 0 else None,
            "second_b": second_b if second_b >= 0 else None,
        }
    return {**comparison.to_json(), "significant_positions": comparison.significant_seconds, "rows": rows}


def comparison_to_choose(ads: list[Ad | None], query: AdPairQuery) -> dict:
    """The page before both ads are chosen: the choices only."""
    return {
        "kind": "compare",
        "comparable": False,
        "reason": "Choose two ads to compare.",
        "ads": [ad_json(ad, letter) if ad else None for ad, letter in zip(ads, "AB", strict=True)],
        "axis": query.axis,
        "filters": query.to_query(),
        "options": {"axes": list(AXES.items())},
    }


def build_ad_comparison(ad_a: Ad, ad_b: Ad, query: AdPairQuery) -> dict:
    """Everything the comparison page shows for two ads (check_comparable_ads first) under one set of
    filters; the per-position test of module docstring. Reads only."""
    filters = query.filters
    facets_a, facets_b = ad_facets(ad_a), ad_facets(ad_b)
    ads = [ad_json(ad_a, "A"), ad_json(ad_b, "B")]
    payload = {
        "kind": "compare",
        "ads": ads,
        "axis": query.axis,
        "axis_label": AXES[query.axis],
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    model_version = common_model_version(facets_a, facets_b, filters.model_version)
    if model_version is None:
        unread = [
            ad["name"]
            for ad, facets in zip(ads, (facets_a, facets_b), strict=True)
            if not facets.model_versions
        ]
        reason = (
            f"No readings of {' and '.join(unread)} yet."
            if unread
            else "These ads were read by different model versions; their readings are not comparable."
        )
        options = {"axes": list(AXES.items())}
        return {
            **payload,
            "comparable": False,
            "reason": reason,
            "filters": query.to_query(),
            "options": options,
        }

    common = [
        m
        for m in shown_measures(facets_a.measures_of(model_version))
        if m in facets_b.measures_of(model_version)
    ]
    measures = comparable_measures(tuple(common))
    if filters.measure not in measures:
        filters = filters.with_measure("smile")
    filters = filters.with_model(model_version)
    query = replace(query, filters=filters)
    # Attention has no baseline-corrected variant: compared raw, whatever the switch (as on the ad page).
    compared = replace(filters, baseline=False) if filters.measure == ATTENTION else filters
    traces_a = load_traces(ad_a, filters, model_version)
    traces_b = load_traces(ad_b, filters, model_version)
    where = positions(traces_a.seconds, traces_b.seconds, query.axis)
    estimate_a = at_seconds(traces_a.estimate(compared.measure, compared.baseline), where.second_a)
    estimate_b = at_seconds(traces_b.estimate(compared.measure, compared.baseline), where.second_b)
    comparison = compare_per_second(estimate_a, estimate_b, compared.measure, compared.correction)
    significant = comparison.significant_seconds
    correction_label = CORRECTION_LABELS[compared.correction]
    names = (ads[0]["name"], ads[1]["name"])
    shared = shared_participants(ad_a, ad_b, filters, model_version)
    versions_b = dict(facets_b.model_versions)
    return {
        **payload,
        "comparable": True,
        "filters": query.to_query(),
        "model_version": model_version,
        "country_labels": country_labels(
            sorted({*facets_a.countries, *facets_b.countries, *filters.countries})
        ),
        "options": {
            "countries": sorted({*facets_a.countries, *facets_b.countries}),
            "devices": sorted({*facets_a.devices, *facets_b.devices}),
            "model_versions": [version for version, _n in facets_a.model_versions if version in versions_b],
            "quality_levels": list(QUALITY_LEVELS),
            "measures": [[measure, MEASURE_LABELS[measure]] for measure in measures],
            "axes": list(AXES.items()),
            "smile_threshold": SMILE_THRESHOLD,
        },
        "figures": {
            "overlay": pair_figure(
                where.x,
                where.x_title,
                where.x_range,
                dict(zip(names, (estimate_a, estimate_b), strict=True)),
                dict(zip(names, AD_COLORS, strict=True)),
                compared.measure,
                compared.baseline,
                significant,
                f"{AXES[query.axis]}; shaded: the ads differ ({correction_label})",
                where.step,
            ),
            "difference": difference_figure(
                where.x,
                where.x_title,
                where.x_range,
                ("A", "B"),
                comparison.test,
                comparison.adjusted,
                significant,
                compared.measure,
                correction_label,
                where.step,
            ),
        },
        "comparison": {**comparison_json(comparison, where), "baseline": compared.baseline},
        "scorecards": [
            build_scorecard(ad, model_version, filters.norm_country, filters.norm_category).to_json()
            for ad in (ad_a, ad_b)
        ],
        "summaries": [
            next(iter(country_summary(ad, filters, model_version, traces, {ALL: color})), None)
            for ad, traces, color in ((ad_a, traces_a, AD_COLORS[0]), (ad_b, traces_b, AD_COLORS[1]))
        ],
        "shared_participants": shared,
    }
