"""Attention and retention (docs/analytics.md, "Attention"): the retention curve from the participants'
first inattentive second, and the figure that shows it beside the attention trace.

Both are computed from rollups only: attention per second from SecondCell's attention statistics
(dashboard.Traces), retention from ParticipantAdSummary.retained_seconds (dashboard.load_retention).
"""

from __future__ import annotations

import numpy as np

from inference.attention import PITCH_DOWN_LIMIT, PITCH_UP_LIMIT, YAW_LIMIT
from research_portal.analytics.definitions import ATTENTION_THRESHOLD, CONFIDENCE, MEASURE_LABELS
from research_portal.analytics.figures import (
    MEASURE_COLORS,
    TIME_AXIS,
    axis,
    band_traces,
    base_layout,
    count_axis,
    participants_bars,
)
from research_portal.analytics.stats import MeanEstimate, estimate_means

RETENTION_COLOR = "#882255"
# "Turned to the screen" in words, for the ad page and the report (the limits are inference/attention.py's).
TURNED_TO_SCREEN = (
    f"head yaw within ±{YAW_LIMIT:g}°, pitch between −{-PITCH_DOWN_LIMIT:g}° and +{PITCH_UP_LIMIT:g}°"
)


def retention_estimate(retained_seconds: np.ndarray, participants: np.ndarray, seconds: int) -> MeanEstimate:
    """Per second s < `seconds`: the share of participants retained at s, i.e. whose `retained_seconds`
    (one value per group of `participants` participants) is greater than s, with its CI.

    Each participant is a 0/1 value (retained or not), so the sum of squares equals the sum and the mean and
    t-based CI come from estimate_means like every other trace's; n is every participant of the selection
    at every second (retention only falls)."""
    retained_seconds = np.clip(np.asarray(retained_seconds, dtype=int), 0, seconds)
    weights = np.asarray(participants, dtype=float)
    histogram = np.bincount(retained_seconds, weights=weights, minlength=seconds + 1)
    total = histogram.sum()
    retained = total - np.cumsum(histogram)[:seconds]  # participants whose retained_seconds > s
    return estimate_means(np.full(seconds, total), retained, retained, CONFIDENCE)


def attention_figure(
    x: list[float],
    duration_s: float,
    attention: MeanEstimate,
    retention: MeanEstimate,
    participants: np.ndarray,
    title: str,
) -> dict:
    """Attention per second (the mean share of each participant's frames turned to the screen) and the
    retention curve, each with its 95% band, over the ad timeline; below, the participants behind each
    second's attention (those with an analysed frame, face or not)."""
    data = band_traces(x, attention, MEASURE_LABELS["attention"], MEASURE_COLORS["attention"], "attention")
    data += band_traces(
        x,
        retention,
        f"Retained (attention ≥ {ATTENTION_THRESHOLD:g} in every second so far)",
        RETENTION_COLOR,
        "retention",
    )
    data.append(participants_bars(x, participants))
    layout = base_layout(title, 460)
    layout.update(
        xaxis=axis(TIME_AXIS, range=[0, duration_s], anchor="y2"),
        yaxis=axis("Share of participants", domain=[0.3, 1.0], range=[0, 1.05], tickformat=".0%"),
        yaxis2=count_axis("n", participants.max() if len(participants) else 0, 3, domain=[0.0, 0.2]),
        bargap=0.1,
    )
    return {"data": data, "layout": layout}
