"""An ad's scorecard, each figure placed against the organisation's norm (docs/analytics.md, "Scorecard and
norms").

The scorecard of an ad: over its validated participants (state completed) with a reading, at any face
quality, read by one model version: mean valence, mean peak smile (each participant's highest second), the
share who smiled, mean expressiveness, mean attention, and n. All of it comes from ParticipantAdSummary
(one row per participant and ad), never from raw frames: one grouped query gives every ad of the
organisation at once.

The norm of an ad: the organisation's other ads read by the same model version (readings of different
models are not comparable) with at least NORM_MIN_PARTICIPANTS validated participants, optionally only
their participants of one country, or only the ads of one category. Each figure's percentile is the share of
the norm's ads below it (ties count half). With fewer than NORM_MIN_ADS ads the scorecard says so instead of
showing percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db.models import Avg, Case, Count, FloatField, Q, When

from research_portal.analytics.models import ParticipantAdSummary
from research_portal.countries import country_label
from research_portal.studies.models import Ad

# An ad enters the norm once this many validated participants have a reading of it: below that its means
# are too noisy to rank others against (the standard error of a share is up to 0.5 / sqrt(n): 0.16 at 10).
NORM_MIN_PARTICIPANTS = 10
# Percentiles need enough ads to mean something: with 5 ads a rank moves in steps of 20 points.
NORM_MIN_ADS = 5

# (key, label, how it is aggregated over the ad's participants)
FIGURES: tuple[tuple[str, str], ...] = (
    ("valence", "Mean valence"),
    ("peak_smile", "Mean peak smile"),
    ("smiled", "Share who smiled"),
    ("expressiveness", "Mean expressiveness"),
    ("attention", "Mean attention"),
)
READ = Q(n_seconds__gt=0)  # participants with a usable reading; attention counts everyone analysed
# 1 for a participant with a reading who smiled, 0 for one who did not, NULL (left out) without a reading.
SMILED_SHARE = Case(When(READ & Q(smiled=True), then=1.0), When(READ, then=0.0), output_field=FloatField())


def _per_ad_means(model_version: str, organization_id: int, country: str) -> dict[int, dict]:
    """{ad id: {"category", "n": validated participants with a reading, figure key: mean}} for the
    organisation's ads read by `model_version`: one grouped query over the participants' summaries."""
    rows = ParticipantAdSummary.objects.filter(
        level=0, completed=True, model_version=model_version, ad__study__organization_id=organization_id
    )
    if country:
        rows = rows.filter(country=country)
    grouped = rows.values("ad_id", "ad__category").annotate(
        n=Count("session_id", filter=READ),
        valence=Avg("mean_valence", filter=READ),
        peak_smile=Avg("peak_smile", filter=READ),
        smiled=Avg(SMILED_SHARE),
        expressiveness=Avg("mean_expressiveness", filter=READ),
        attention=Avg("mean_attention"),
    )
    return {row.pop("ad_id"): {**row, "category": row.pop("ad__category")} for row in grouped}


def percentile(value: float | None, others: np.ndarray) -> float | None:
    """The share of `others` below `value` (ties count half), in percent; None without a value."""
    others = others[np.isfinite(others)]
    if value is None or not others.size:
        return None
    below = float((others < value).sum()) + 0.5 * float((others == value).sum())
    return round(100 * below / others.size, 1)


@dataclass(frozen=True)
class ScoreFigure:
    key: str
    label: str
    value: float | None
    percentile: float | None  # None: no value, or too few ads in the norm


@dataclass(frozen=True)
class Norm:
    ads: int  # the organisation's other ads in the norm
    country: str  # "" = every country
    country_label: str
    category: str  # "" = every category
    enough: bool  # ads >= NORM_MIN_ADS: percentiles shown
    min_ads: int = NORM_MIN_ADS
    min_participants: int = NORM_MIN_PARTICIPANTS

    @property
    def description(self) -> str:
        where = f"participants from {self.country_label}" if self.country else "all participants"
        which = f"ads in category “{self.category}”" if self.category else "ads of every category"
        text = f"{self.ads} other ads ({which}; {where}; each with ≥ {self.min_participants} validated)"
        if not self.enough:
            text += f": too few for percentiles (at least {self.min_ads} needed)"
        return text


@dataclass(frozen=True)
class Scorecard:
    ad_id: int
    model_version: str
    n: int  # validated participants with a reading of the ad (in the norm's country, when one is chosen)
    figures: list[ScoreFigure]
    norm: Norm

    def to_json(self) -> dict:
        return {
            "ad": self.ad_id,
            "model_version": self.model_version,
            "n": self.n,
            "figures": [vars(figure) for figure in self.figures],
            "norm": {**vars(self.norm), "description": self.norm.description},
        }


def build_scorecard(ad: Ad, model_version: str, country: str = "", category: str = "") -> Scorecard:
    """The ad's scorecard against its norm (module docstring). `country`: only participants from there, in
    the ad and in the norm; `category`: only norm ads of that category ("": every category)."""
    means = _per_ad_means(model_version, ad.study.organization_id, country)
    own = means.pop(ad.pk, {})
    norm_ads = [
        row
        for row in means.values()
        if row["n"] >= NORM_MIN_PARTICIPANTS and (not category or row["category"] == category)
    ]
    enough = len(norm_ads) >= NORM_MIN_ADS
    figures = []
    for key, label in FIGURES:
        value = own.get(key)
        value = None if value is None else round(float(value), 4)
        others = np.array([np.nan if row[key] is None else row[key] for row in norm_ads], dtype=float)
        figures.append(ScoreFigure(key, label, value, percentile(value, others) if enough else None))
    norm = Norm(
        ads=len(norm_ads),
        country=country,
        country_label=country_label(country) if country else "",
        category=category,
        enough=enough,
    )
    return Scorecard(ad.pk, model_version, int(own.get("n") or 0), figures, norm)


def norm_categories(ad: Ad) -> list[str]:
    """The categories of the organisation's ads, for the norm's choice."""
    ads = Ad.objects.filter(study__organization_id=ad.study.organization_id).exclude(category="")
    return sorted(set(ads.values_list("category", flat=True)))
