"""What a stored reading can hold: one FrameResult column per emotion label the product knows.

A model's readings carry the model's own labels (its ONNX metadata, `inference.model.EmotionModel.labels`);
each label is stored in the FrameResult column of that name, and a label the model does not have stays NULL
in its rows, so every rollup, trace and export of that model version leaves it out (never reads it as 0).
A model with a label outside this list needs a column first (a migration), and is refused until then.
"""

from __future__ import annotations

from collections.abc import Iterable

# FER2013's seven labels, then FER+'s eighth; the display order of the dashboards and exports.
READING_LABELS: tuple[str, ...] = (
    "angry",
    "disgust",
    "fear",
    "happy",
    "sad",
    "surprise",
    "neutral",
    "contempt",
)
# The smile score is the probability of this label (docs/analytics.md).
SMILE_LABEL = "happy"


class ModelLabelsError(ValueError):
    """A model whose readings cannot be stored: a label without a FrameResult column, or no smile label."""


def check_model_labels(labels: Iterable[str]) -> None:
    """Raise ModelLabelsError unless every label has a column and the smile label is among them."""
    labels = tuple(labels)
    unknown = [label for label in labels if label not in READING_LABELS]
    if unknown:
        raise ModelLabelsError(
            f"the model's labels {unknown} have no FrameResult column (known: {', '.join(READING_LABELS)}); "
            "add the columns with a migration before serving this model"
        )
    if SMILE_LABEL not in labels:
        raise ModelLabelsError(f"the model has no {SMILE_LABEL!r} label, which the smile score needs")
