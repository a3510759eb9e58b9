"""Training, export and evaluation of the portal's emotion classifier.

Importing this package is cheap and torch-free: `data` and `evaluate` need only numpy and
onnxruntime, so the product can evaluate a shipped model without the training extra. The
training entry point (`python -m inference.training --config ...`) imports torch lazily.
"""

# The labels of the two heads, named alike: FER2013's order, and FER+'s vote columns (ferplus_votes.npz
# `columns`: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt) under FER2013's names, so
# that "happy" is the same reading whichever head a model ships as its default.
FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS_LABELS: tuple[str, ...] = (
    "neutral",
    "happy",
    "surprise",
    "sad",
    "angry",
    "disgust",
    "fear",
    "contempt",
)
HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {
    "probabilities": FER_LABELS,
    "ferplus_probabilities": FERPLUS_LABELS,
}
