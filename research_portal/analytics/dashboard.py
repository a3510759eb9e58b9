"""What the dashboards show, computed from rollups only (never a scan of raw frames on a page view).

`build_ad_dashboard(ad, filters)` and `build_study_overview(study, filters)` return JSON-ready dicts; the
views, the live socket and the exports all call them, so every surface shows the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.urls import reverse

from research_portal.analytics.attention import attention_figure, retention_estimate
from research_portal.analytics.definitions import (
    ALPHA,
    ATTENTION,
    CONFIDENCE,
    EXPRESSIVENESS,
    EXPRESSIVENESS_SOURCE,
    MEASURE_LABELS,
    MEASURES,
    QUALITY_LEVELS,
    SMILE_THRESHOLD,
    cell_value_columns,
)
from research_portal.analytics.figures import (
    FUNNEL_STAGES,
    TIME_AXIS,
    country_color,
    country_figure,
    difference_figure,
    funnel_figure,
    quota_figure,
    trace_figure,
)
from research_portal.analytics.figures import clean as clean_numbers
from research_portal.analytics.models import ParticipantAdSummary, SecondCell
from research_portal.analytics.moments import key_moments, moment_rule
from research_portal.analytics.norms import build_scorecard, norm_categories
from research_portal.analytics.services import Filters, get_country_quotas
from research_portal.analytics.stats import CORRECTIONS, MeanEstimate, WelchTest, estimate_means, welch_test
from research_portal.capture.models import REFUSED_AT_ENTRY, ParticipantSession
from research_portal.countries import country_label, country_labels
from research_portal.studies.models import Ad, Study

ALL = "*"  # the group of every selected participant
CORRECTION_LABELS = {"bh": "Benjamini-Hochberg FDR q < 0.05", "holm": "Holm FWER p < 0.05"}
State = ParticipantSession.State


def filter_dimensions(queryset: QuerySet, filters: Filters, model_version: str) -> QuerySet:
    """Apply the filters to a rollup table that carries the session's filter dimensions."""
    queryset = queryset.filter(level=filters.level, model_version=model_version)
    if filters.countries:
        queryset = queryset.filter(country__in=filters.countries)
    if filters.devices:
        queryset = queryset.filter(device_type__in=filters.devices)
    if filters.completed_only:
        queryset = queryset.filter(completed=True)
    if filters.date_from:
        queryset = queryset.filter(day__gte=filters.date_from)
    if filters.date_to:
        queryset = queryset.filter(day__lte=filters.date_to)
    return queryset


@dataclass(frozen=True)
class AdFacets:
    """What the ad's rollups contain, for the filter choices (read at quality level 0)."""

    model_versions: list[tuple[str, int]]  # (version, participant-seconds), most used first
    countries: list[str]
    devices: list[str]
    first_day: str | None
    last_day: str | None
    # Per model version, the measures its readings have (its labels, in display order): a label the model
    # does not read has no participant-second, so its traces, legend entries and export columns are left out.
    measures: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def default_model(self, requested: str) -> str:
        versions = [version for version, _n in self.model_versions]
        if requested in versions:
            return requested
        return versions[0] if versions else requested

    def measures_of(self, model_version: str) -> tuple[str, ...]:
        """The model version's measures; every measure for a version with no rollups yet."""
        return self.measures.get(model_version, MEASURES)

    def measures_of_all(self, model_version: str = "") -> tuple[str, ...]:
        """The measures of one model version, or (empty version) of any of the ad's versions."""
        if model_version:
            return self.measures_of(model_version)
        present = {measure for measures in self.measures.values() for measure in measures}
        return tuple(m for m in MEASURES if m in present) if present else MEASURES


def ad_facets(ad: Ad) -> AdFacets:
    counts = {f"count_{measure}": Sum(f"n_{measure}") for measure in MEASURES}
    rows = list(
        # Cells with a reading, or only with attention (participants whose faces were never found).
        SecondCell.objects.filter(Q(participants__gt=0) | Q(n_attention__gt=0), ad=ad, level=0)
        .values("model_version", "country", "device_type")
        .annotate(participants=Sum("participants"), first=Min("day"), last=Max("day"), **counts)
    )
    per_model: dict[str, int] = {}
    present: dict[str, set[str]] = {}
    for row in rows:
        model = row["model_version"]
        per_model[model] = per_model.get(model, 0) + row["participants"]
        present.setdefault(model, set()).update(m for m in MEASURES if row[f"count_{m}"])
    firsts = [row["first"] for row in rows]
    lasts = [row["last"] for row in rows]
    return AdFacets(
        model_versions=sorted(per_model.items(), key=lambda item: (-item[1], item[0])),
        countries=sorted({row["country"] for row in rows}),
        devices=sorted({row["device_type"] for row in rows}),
        first_day=min(firsts).isoformat() if firsts else None,
        last_day=max(lasts).isoformat() if lasts else None,
        measures={
            model: tuple(m for m in MEASURES if m in found or m == "smile")
            for model, found in present.items()
        },
    )


def comparable_measures(measures: tuple[str, ...]) -> tuple[str, ...]:
    """What the country comparison and key moments can be asked for: the shown measures, expressiveness
    where the model reads neutral, and attention (definitions.DERIVED_MEASURES)."""
    derived = (EXPRESSIVENESS,) if EXPRESSIVENESS_SOURCE in measures else ()
    return (*measures, *derived, ATTENTION)


def shown_measures(measures: tuple[str, ...]) -> tuple[str, ...]:
    """The measures the dashboard draws and offers: smile is p(happy) (capture/readings.py), so a happy
    trace would repeat the smile trace under a second name; it is shown once, as Smile. The exports keep
    the happy column (it is the model's label)."""
    return tuple(measure for measure in measures if measure != "happy")


# SecondCell's value columns, in the order of Traces.sums' columns.
VALUE_COLUMNS = cell_value_columns()
VALUE_INDEX = {column: index for index, column in enumerate(VALUE_COLUMNS)}


@dataclass
class Traces:
    """Per-second sufficient statistics of the selected participants, overall (ALL) and per country."""

    seconds: int
    sums: dict[str, np.ndarray]  # group -> [seconds, len(cell_value_columns())]

    @property
    def countries(self) -> list[str]:
        return sorted(group for group in self.sums if group != ALL)

    def participants(self, group: str = ALL) -> np.ndarray:
        return self.sums[group][:, 0]

    def estimate(self, measure: str, baseline: bool, group: str = ALL) -> MeanEstimate:
        """Per-second mean across participants with its CI: a measure of MEASURES, expressiveness (exactly
        1 - neutral: n, n - s, n - 2s + q; baseline-corrected nb, -sb, qb) or attention (never corrected)."""
        table = self.sums.get(group, np.zeros((self.seconds, len(VALUE_COLUMNS))))

        def column(name: str) -> np.ndarray:
            return table[:, VALUE_INDEX[name]]

        if measure == ATTENTION:
            n, s, q = (column(f"{stat}_{ATTENTION}") for stat in ("n", "s", "q"))
            return estimate_means(n, s, q, CONFIDENCE)
        source = EXPRESSIVENESS_SOURCE if measure == EXPRESSIVENESS else measure
        prefix = ("nb", "sb", "qb") if baseline else ("n", "s", "q")
        n, s, q = (column(f"{stat}_{source}") for stat in prefix)
        if measure == EXPRESSIVENESS:
            # x -> 1 - x (raw) or x - b -> -(x - b) (corrected): the same participants, sums transformed.
            s, q = (-s, q) if baseline else (n - s, n - 2 * s + q)
        return estimate_means(n, s, q, CONFIDENCE)

    def attention_participants(self, group: str = ALL) -> np.ndarray:
        """Participants with an analysed frame in each second (attention's n)."""
        table = self.sums.get(group, np.zeros((self.seconds, len(VALUE_COLUMNS))))
        return table[:, VALUE_INDEX[f"n_{ATTENTION}"]]


def load_traces(ad: Ad, filters: Filters, model_version: str) -> Traces:
    """One GROUP BY (second, country) over the selected SecondCell rows; the overall trace is their sum
    (participants are disjoint across countries)."""
    columns = VALUE_COLUMNS
    rows = list(
        filter_dimensions(SecondCell.objects.filter(ad=ad), filters, model_version)
        .values("second", "country")
        .annotate(**{f"v_{column}": Sum(column) for column in columns})
        .values_list("second", "country", *[f"v_{column}" for column in columns])
        .order_by()
    )
    last_second = max([row[0] for row in rows], default=-1)
    seconds = max(int(np.ceil(ad.duration_ms / 1000)), last_second + 1, 1)
    sums: dict[str, np.ndarray] = {ALL: np.zeros((seconds, len(columns)))}
    for second, country, *values in rows:
        if second < 0:
            continue
        table = sums.setdefault(country, np.zeros((seconds, len(columns))))
        table[second] += np.asarray(values, dtype=float)
        sums[ALL][second] += np.asarray(values, dtype=float)
    return Traces(seconds=seconds, sums=sums)


def load_retention(ad: Ad, filters: Filters, model_version: str, seconds: int) -> MeanEstimate:
    """The retention curve of the selected participants (docs/analytics.md, "Retention"): per second, the
    share still attending since the start, from ParticipantAdSummary.retained_seconds (one GROUP BY)."""
    counts = list(
        filter_dimensions(ParticipantAdSummary.objects.filter(ad=ad), filters, model_version)
        .values_list("retained_seconds")
        .annotate(n=Count("id"))
        .order_by()
    )
    retained = np.array([value for value, _n in counts], dtype=int)
    return retention_estimate(retained, np.array([n for _value, n in counts]), seconds)


# Per-participant means over the ad in the summary table: (name in the payload, column, baseline column).
SUMMARY_MEANS = (
    ("valence", "mean_valence", "mean_valence_bc"),
    ("expressiveness", "mean_expressiveness", "mean_expressiveness_bc"),
    ("attention", "mean_attention", "mean_attention"),  # attention is never baseline-corrected
)


def country_summary(
    ad: Ad, filters: Filters, model_version: str, traces: Traces, colors: dict[str, str]
) -> list[dict]:
    """Per country (and all): participants, mean valence, expressiveness and attention over the ad with their
    CIs (participants as the unit), peak of the smile trace and when, share of participants whose smile
    reached SMILE_THRESHOLD, and share retained (attending) through the whole ad.

    `participants` are those with a usable reading at the quality level (valence, smile, expressiveness);
    attention and retention count every participant with an analysed frame (`attention_participants`)."""
    sums = {}
    for name, raw, corrected in SUMMARY_MEANS:
        column = corrected if filters.baseline else raw
        sums |= {
            f"n_{name}": Count(column),
            f"sum_{name}": Sum(column),
            f"squares_{name}": Sum(F(column) * F(column)),
        }
    per_country = list(
        filter_dimensions(ParticipantAdSummary.objects.filter(ad=ad), filters, model_version)
        .values("country")
        .annotate(
            participants=Count("id", filter=Q(n_seconds__gt=0)),
            attention_participants=Count("id"),
            smiled=Count("id", filter=Q(smiled=True)),
            retained=Count("id", filter=Q(retained_seconds__gte=traces.seconds)),
            frames=Sum("n_frames"),
            **sums,
        )
        .order_by("country")
    )
    if not per_country:
        return []
    total = {key: sum(row[key] or 0 for row in per_country) for key in per_country[0] if key != "country"}
    rows = [{**total, "country": ALL}] + per_country
    means = {
        name: estimate_means(
            [row[f"n_{name}"] for row in rows],
            [row[f"sum_{name}"] or 0.0 for row in rows],
            [row[f"squares_{name}"] or 0.0 for row in rows],
            CONFIDENCE,
        )
        for name, _raw, _corrected in SUMMARY_MEANS
    }
    summary = []
    for index, row in enumerate(rows):
        smile = traces.estimate("smile", filters.baseline, row["country"]).mean
        has_smile = np.isfinite(smile).any()
        peak_second = int(np.nanargmax(smile)) if has_smile else None
        entry = {
            "country": "All" if row["country"] == ALL else (row["country"] or "unknown"),
            "color": colors.get(row["country"], "#333333"),
            "participants": row["participants"],
            "frames": row["frames"] or 0,
        }
        for name, estimate in means.items():
            entry[f"mean_{name}"] = clean_numbers([estimate.mean[index]], 4)[0]
            entry[f"{name}_low"] = clean_numbers([estimate.low[index]], 4)[0]
            entry[f"{name}_high"] = clean_numbers([estimate.high[index]], 4)[0]
        entry |= {
            "peak_smile": round(float(smile[peak_second]), 4) if peak_second is not None else None,
            "peak_smile_time": f"{peak_second}–{peak_second + 1} s" if peak_second is not None else "",
            "smiled_share": round(row["smiled"] / row["participants"], 4) if row["participants"] else None,
            "attention_participants": row["attention_participants"],
            "retained_share": round(row["retained"] / row["attention_participants"], 4)
            if row["attention_participants"]
            else None,
        }
        summary.append(entry)
    return summary


COMPARISON_NUMBERS = ("mean_a", "mean_b", "difference", "low", "high", "t", "df", "p", "p_adjusted")


@dataclass(frozen=True)
class PerSecondComparison:
    """The per-second Welch test of one measure between two groups of participants (two countries of an
    ad, or two ads), corrected for the seconds tested. Element i of each array is one tested position: a
    second of the ad, or a share of the ads' lengths (analytics/ad_comparison.py)."""

    measure: str
    correction: str
    estimate_a: MeanEstimate
    estimate_b: MeanEstimate
    test: WelchTest
    adjusted: np.ndarray  # p corrected across the tested positions (NaN where untested)

    @property
    def significant_seconds(self) -> list[int]:
        with np.errstate(invalid="ignore"):
            return [int(second) for second in np.flatnonzero(self.adjusted < ALPHA)]

    def rows(self) -> list[dict]:
        """One JSON-ready row per position (the dashboards' tables and the comparison exports)."""
        significant = set(self.significant_seconds)
        a, b, test = self.estimate_a, self.estimate_b, self.test
        tested = [test.difference, test.low, test.high, test.t, test.df, test.p, self.adjusted]
        columns = [a.mean, b.mean, *tested]
        return [
            {
                "second": second,
                "n_a": int(a.n[second]),
                "n_b": int(b.n[second]),
                **dict(
                    zip(
                        COMPARISON_NUMBERS,
                        clean_numbers([column[second] for column in columns], 6),
                        strict=True,
                    )
                ),
                "significant": second in significant,
            }
            for second in range(len(self.adjusted))
        ]

    def to_json(self) -> dict:
        return {
            "measure": self.measure,
            "measure_label": MEASURE_LABELS[self.measure],
            "correction": self.correction,
            "correction_label": CORRECTION_LABELS[self.correction],
            "alpha": ALPHA,
            "tested_seconds": int(np.isfinite(self.test.p).sum()),
            "significant_seconds": self.significant_seconds,
            "rows": self.rows(),
        }


def compare_per_second(
    estimate_a: MeanEstimate, estimate_b: MeanEstimate, measure: str, correction: str
) -> PerSecondComparison:
    """Welch t-test per element, corrected (BH or Holm) across the elements that could be tested (both
    groups with n >= 2 and some variance)."""
    test = welch_test(estimate_a, estimate_b, CONFIDENCE)
    return PerSecondComparison(
        measure=measure,
        correction=correction,
        estimate_a=estimate_a,
        estimate_b=estimate_b,
        test=test,
        adjusted=CORRECTIONS[correction](test.p),
    )


@dataclass(frozen=True)
class CountryComparison:
    """Two countries of an ad compared second by second."""

    countries: tuple[str, str]
    per_second: PerSecondComparison

    @property
    def significant_seconds(self) -> list[int]:
        return self.per_second.significant_seconds

    def to_json(self) -> dict:
        return {"countries": list(self.countries), **self.per_second.to_json()}


def compare_countries(traces: Traces, filters: Filters, ranking: list[str]) -> CountryComparison | None:
    """Welch t-test of the chosen measure per second between two countries (those of the filters, else the
    two with the most participants), corrected across the seconds that could be tested."""
    compared = filters.compare or (tuple(ranking[:2]) if len(ranking) >= 2 else None)
    if not compared:
        return None
    a, b = compared
    estimate_a = traces.estimate(filters.measure, filters.baseline, a)
    estimate_b = traces.estimate(filters.measure, filters.baseline, b)
    return CountryComparison(
        countries=(a, b),
        per_second=compare_per_second(estimate_a, estimate_b, filters.measure, filters.correction),
    )


@dataclass(frozen=True)
class AdReadings:
    """The ad's traces and statistics for these filters, before they become figures: the dashboard's payload
    (ad_dashboard_payload) and the PDF report (report.py) are both drawn from one of these."""

    ad: Ad
    facets: AdFacets
    filters: Filters  # settled: the model version shown, a measure that model can compare
    compared: Filters  # what the country comparison and its moments use (attention: never baseline)
    measures: list[str]
    comparable: list[str]
    traces: Traces
    colors: dict[str, str]  # country code (and ALL) -> line colour
    estimates: dict[str, MeanEstimate]  # every shown measure, expressiveness where the model reads neutral
    attention: MeanEstimate
    retention: MeanEstimate
    participants: np.ndarray
    summary: list[dict]
    comparison: CountryComparison | None
    countries: list[str]  # drawn in the country figure
    country_estimates: dict[str, MeanEstimate]  # of the compared measure

    @property
    def model_version(self) -> str:
        return self.filters.model_version


def load_ad_readings(ad: Ad, filters: Filters) -> AdReadings:
    """The readings build_ad_dashboard shows, from SecondCell and ParticipantAdSummary (reads only)."""
    facets = ad_facets(ad)
    model_version = facets.default_model(filters.model_version)
    measures = shown_measures(facets.measures_of(model_version))
    comparable = comparable_measures(measures)
    if filters.measure not in comparable:  # e.g. contempt, chosen for a model that reads it, then switched
        filters = filters.with_measure("smile")
    filters = filters.with_model(model_version)
    # Attention has no baseline-corrected variant: compared (and its moments found) raw, whatever the switch.
    compared = replace(filters, baseline=False) if filters.measure == ATTENTION else filters
    traces = load_traces(ad, filters, model_version)
    colors = {country: country_color(index) for index, country in enumerate(facets.countries)}
    colors[ALL] = "#333333"
    estimates = {measure: traces.estimate(measure, filters.baseline) for measure in measures}
    if EXPRESSIVENESS_SOURCE in measures:  # 1 - p(neutral): only a model that reads neutral has it
        estimates[EXPRESSIVENESS] = traces.estimate(EXPRESSIVENESS, filters.baseline)
    summary = country_summary(ad, filters, model_version, traces, colors)
    ranking = [row["country"] for row in sorted(summary[1:], key=lambda r: -r["participants"])]
    comparison = compare_countries(traces, compared, ranking)
    countries = [c for c in traces.countries if traces.participants(c).sum() > 0]
    if comparison:
        countries += [c for c in comparison.countries if c not in countries]
    return AdReadings(
        ad=ad,
        facets=facets,
        filters=filters,
        compared=compared,
        measures=measures,
        comparable=comparable,
        traces=traces,
        colors=colors,
        estimates=estimates,
        attention=traces.estimate(ATTENTION, False),
        retention=load_retention(ad, filters, model_version, traces.seconds),
        participants=traces.participants(),
        summary=summary,
        comparison=comparison,
        countries=countries,
        country_estimates={c: traces.estimate(compared.measure, compared.baseline, c) for c in countries},
    )


def build_ad_dashboard(ad: Ad, filters: Filters) -> dict:
    """Everything the ad dashboard shows for these filters, from SecondCell and ParticipantAdSummary. Reads
    only: the rollups are kept up to date by the writers and the periodic reconcile (rollups.py)."""
    return ad_dashboard_payload(load_ad_readings(ad, filters))


def ad_dashboard_payload(readings: AdReadings) -> dict:
    """The dashboard's JSON-ready payload (figures, moments, scorecard, options) of these readings."""
    ad, facets, filters, compared = readings.ad, readings.facets, readings.filters, readings.compared
    model_version, comparable, traces = readings.model_version, readings.comparable, readings.traces
    estimates, attention, participants = readings.estimates, readings.attention, readings.participants
    summary, comparison, countries = readings.summary, readings.comparison, readings.countries
    x = [second + 0.5 for second in range(traces.seconds)]
    duration_s = float(traces.seconds)

    figures = {
        "trace": trace_figure(
            x,
            duration_s,
            estimates,
            participants,
            filters.baseline,
            f"{ad.title}: mean per second across participants, 95% CI"
            + (" (minus each participant's baseline)" if filters.baseline else ""),
        ),
        "countries": country_figure(
            x,
            duration_s,
            countries,
            readings.country_estimates,
            compared.measure,
            compared.baseline,
            compared.layout,
            comparison.countries if comparison else None,
            comparison.significant_seconds if comparison else [],
            CORRECTION_LABELS[filters.correction],
            readings.colors,
        ),
        "difference": None,
        "attention": attention_figure(
            x,
            duration_s,
            attention,
            readings.retention,
            traces.attention_participants(),
            f"{ad.title}: attention and retention per second across participants, 95% CI",
        ),
    }
    if comparison:
        figures["difference"] = difference_figure(
            x,
            TIME_AXIS,
            [0, duration_s],
            (country_label(comparison.countries[0]), country_label(comparison.countries[1])),
            comparison.per_second.test,
            comparison.per_second.adjusted,
            comparison.significant_seconds,
            filters.measure,
            CORRECTION_LABELS[filters.correction],
        )

    moments = []
    traced = {**estimates, ATTENTION: attention}
    for measure in dict.fromkeys(("smile", "valence", compared.measure)):
        if measure in traced:  # valence is absent for a model without valence weights
            baseline = filters.baseline and measure != ATTENTION
            moments += key_moments(traced[measure], measure, baseline, filters.correction)
    scorecard = build_scorecard(ad, model_version, filters.norm_country, filters.norm_category)
    study = ad.study
    return {
        "kind": "ad",
        "ad": {
            "id": ad.pk,
            "title": ad.title,
            "duration_s": ad.duration_ms / 1000,
            "video_url": reverse("analytics:ad-video", args=[ad.pk]),
            "study": {
                "id": study.pk,
                "name": study.name,
                "status": study.status,
                "url": reverse("analytics:study", args=[study.pk]),
            },
        },
        "filters": filters.to_query(),
        "model_version": model_version,
        # "Germany (DE)" for every country code the payload holds (data stays by code, as in the exports).
        "country_labels": country_labels(
            sorted({*facets.countries, *filters.countries, *(comparison.countries if comparison else ())})
        ),
        "options": {
            "countries": facets.countries,
            "devices": facets.devices,
            "model_versions": [version for version, _n in facets.model_versions],
            "quality_levels": list(QUALITY_LEVELS),
            "measures": [[measure, MEASURE_LABELS[measure]] for measure in comparable],
            "first_day": facets.first_day,
            "last_day": facets.last_day,
            "smile_threshold": SMILE_THRESHOLD,
            "norm_categories": norm_categories(ad),
        },
        "totals": {
            "participants": summary[0]["participants"] if summary else 0,
            "frames": summary[0]["frames"] if summary else 0,
            "max_participants_per_second": int(participants.max()) if participants.size else 0,
        },
        "figures": figures,
        "moments": [moment.to_json() for moment in moments],
        "moment_rule": moment_rule(filters.correction),
        "summary": summary,
        "comparison": comparison.to_json() if comparison else None,
        "scorecard": scorecard.to_json(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ---- study overview ---------------------------------------------------------------------------------------

EXCLUDED_STATES = (State.FAILED, State.DECLINED, State.OVER_QUOTA)


def reason_category(state: str, reason: str) -> str:
    """Exclusion reasons carry details after a colon ("not enough usable frames: Ad 1: 3 of 20"); group by
    the part before it."""
    head = (reason or "").split(":", 1)[0].strip()
    return head or dict(State.choices).get(state, state).lower()


def build_study_overview(study: Study, filters: Filters) -> dict:
    """Funnel per country, exclusions with their reasons, quota progress and the study's ads."""
    sessions = ParticipantSession.objects.filter(study=study, is_preview=False)  # previews never count
    if filters.countries:
        sessions = sessions.filter(country__in=filters.countries)
    if filters.devices:
        sessions = sessions.filter(device_type__in=filters.devices)
    if filters.date_from:
        sessions = sessions.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        sessions = sessions.filter(created_at__date__lte=filters.date_to)
    funnel = list(
        sessions.values("country")
        .annotate(
            started=Count("id", filter=~REFUSED_AT_ENTRY),
            consented=Count("id", filter=Q(consent_at__isnull=False)),
            checks_passed=Count("id", filter=Q(checks_passed_at__isnull=False)),
            viewed=Count("id", filter=Q(viewing_ended_at__isnull=False)),
            validated=Count("id", filter=Q(state=State.COMPLETED)),
            failed=Count("id", filter=Q(state=State.FAILED)),
            declined=Count("id", filter=Q(state=State.DECLINED)),
            over_quota=Count("id", filter=Q(state=State.OVER_QUOTA)),
            in_progress=Count("id", filter=Q(state__in=[State.STARTED, State.CONSENTED, State.VIEWING])),
        )
        .order_by("country")
    )
    keys = [key for key, _label in FUNNEL_STAGES] + ["failed", "declined", "over_quota", "in_progress"]
    total = {"country": "All", **{key: sum(row[key] for row in funnel) for key in keys}}

    exclusions: dict[tuple[str, str], dict] = {}
    for state, reason, country, count in (
        sessions.filter(state__in=EXCLUDED_STATES)
        .values_list("state", "exclusion_reason", "country")
        .annotate(n=Count("id"))
        .order_by()
    ):
        category = reason_category(state, reason)
        entry = exclusions.setdefault(
            (state, category),
            {"state": state, "reason": category, "count": 0, "countries": {}, "examples": []},
        )
        entry["count"] += count
        entry["countries"][country or "unknown"] = entry["countries"].get(country or "unknown", 0) + count
        if reason and reason != category and len(entry["examples"]) < 3:
            entry["examples"].append(reason)
    quotas = get_country_quotas(study)
    validated = {row["country"]: row["validated"] for row in funnel}
    quota_rows = [
        {
            "country": country,
            "target": target,
            "validated": validated.get(country, 0),
            "share": round(validated.get(country, 0) / target, 4) if target else None,
        }
        for country, target in sorted(quotas.items())
    ]
    per_ad = dict(
        # Participants with a reading (a summary row exists for any analysed frame: n_seconds may be 0).
        ParticipantAdSummary.objects.filter(ad__study=study, level=0, n_seconds__gt=0)
        .values("ad_id")
        .annotate(n=Count("session_id", distinct=True))
        .values_list("ad_id", "n")
    )
    ads = [
        {
            "id": ad.pk,
            "title": ad.title,
            "duration_s": ad.duration_ms / 1000,
            "participants": per_ad.get(ad.pk, 0),
            "url": reverse("analytics:ad", args=[ad.pk]),
        }
        for ad in study.ads.order_by("position", "id")
    ]
    return {
        "kind": "study",
        "study": {
            "id": study.pk,
            "name": study.name,
            "status": study.status,
            "organization": study.organization.name,
        },
        "filters": filters.to_query(),
        "country_labels": country_labels(
            sorted({*(row["country"] for row in funnel), *quotas, *filters.countries})
        ),
        "funnel": funnel,
        "total": total,
        "exclusions": sorted(exclusions.values(), key=lambda entry: -entry["count"]),
        "quotas": quota_rows,
        "ads": ads,
        "figures": {
            "funnel": funnel_figure(funnel),
            "quotas": quota_figure(quota_rows) if quota_rows else None,
        },
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
