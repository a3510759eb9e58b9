"""What the dashboards measure: the per-frame columns aggregated, the quality levels, labels and thresholds.

Everything that names a measure or a quality level comes from here, so rollup tables, SQL, statistics,
figures and exports agree.
"""

from __future__ import annotations

from research_portal.capture.readings import READING_LABELS

# FrameResult columns aggregated per participant and second, in display order: the smile score, valence,
# and every emotion label a reading can carry (readings.READING_LABELS, the one list of labels). A model
# version reads a subset of the labels (its metadata's); the others are NULL in its frames and rollups, and
# `AdFacets.measures` leaves them out of its traces, legend and exports.
MEASURES: tuple[str, ...] = ("smile", "valence", *READING_LABELS)
MEASURE_LABELS: dict[str, str] = {
    "smile": "Smile",
    "valence": "Valence",
    "angry": "Anger",
    "disgust": "Disgust",
    "fear": "Fear",
    "happy": "Happiness",
    "sad": "Sadness",
    "surprise": "Surprise",
    "neutral": "Neutral",
    "contempt": "Contempt",
    "expressiveness": "Expressiveness",
    "attention": "Attention",
}
# A measure that may be NULL on a frame with a face (valence needs weights in the model's metadata) is
# counted separately; every other measure is present whenever a face was found, or, for an emotion, never
# in a model version that lacks that label (its rollup sums are then NULL, not 0).
NULLABLE_MEASURES: frozenset[str] = frozenset({"valence"})

# Quality filter: a participant-second is computed from the frames whose face quality is at least the level's
# threshold. Level 0 keeps every frame with a face (quality may be unknown). Fixed levels let the rollups keep
# one row per level instead of one per frame, so filtering by quality never touches raw frames.
QUALITY_LEVELS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)

# A participant "smiled" during an ad when their smile score, averaged within one second, reached this.
SMILE_THRESHOLD = 0.5

# Derived per-second measures (docs/analytics.md), shown as traces beside MEASURES but without columns of
# their own in the frame rollups:
# - expressiveness = 1 - p(neutral): how far a face is from neutral. Its cell statistics follow exactly
#   from the neutral measure's (n, n - s, n - 2s + q; baseline-corrected: nb, -sb, qb), so a model without
#   a neutral label has none.
# - attention = the share of a participant's analysed frames in the second (face or not) whose face is
#   turned to the screen (FrameResult.attending; a face without a pose counts as attending). Counted from
#   every analysed frame whatever the quality level, and never baseline-corrected; its cell statistics are
#   ATTENTION_STATS.
EXPRESSIVENESS = "expressiveness"
EXPRESSIVENESS_SOURCE = "neutral"
ATTENTION = "attention"
DERIVED_MEASURES: tuple[str, ...] = (EXPRESSIVENESS, ATTENTION)
# Retention: a participant is retained at second s while every analysed second 0..s of theirs has an
# attention of at least this (seconds without frames are skipped; after their last one they are lost).
ATTENTION_THRESHOLD = 0.5
CONFIDENCE = 0.95
# False discovery rate (Benjamini-Hochberg) or family-wise error rate (Holm) for the per-second tests.
ALPHA = 0.05


def count_column(measure: str) -> str:
    """The participant-second column that counts the frames behind `measure`."""
    return "n_valence" if measure in NULLABLE_MEASURES else "n_frames"


def quality_level(threshold: float) -> int:
    """The level index of an offered quality threshold; ValueError for any other value."""
    for index, value in enumerate(QUALITY_LEVELS):
        if abs(value - threshold) < 1e-9:
            return index
    raise ValueError(f"quality must be one of {', '.join(str(v) for v in QUALITY_LEVELS)}")


# Sufficient statistics kept per cell and measure: participants, sum and sum of squares of their per-second
# means, and the same for baseline-corrected means (participants with a baseline only).
CELL_STATS: tuple[str, ...] = ("n", "s", "q", "nb", "sb", "qb")


def cell_columns() -> list[str]:
    """Value columns of SecondCell after `participants`, in the order contributions are laid out."""
    return [f"{stat}_{measure}" for measure in MEASURES for stat in CELL_STATS]


# Attention's cell statistics: participants with an analysed frame in the second, the sum and the sum of
# squares of their attention shares (no baseline-corrected variant).
ATTENTION_STATS: tuple[str, ...] = ("n", "s", "q")


def attention_columns() -> list[str]:
    return [f"{stat}_{ATTENTION}" for stat in ATTENTION_STATS]


def cell_value_columns() -> list[str]:
    """Every value column of SecondCell, in the order contributions are laid out: `participants` (with a
    usable reading at the cell's quality level), the measures' statistics, then attention's."""
    return ["participants", *cell_columns(), *attention_columns()]
