"""Training, export and evaluation of the portal's emotion classifier.

Importing this package is cheap and torch-free: `data` and `evaluate` need only numpy and
onnxruntime, so the product can evaluate a shipped model without the training extra. The
training entry point (`python -m inference.training --config ...`) imports torch lazily.
"""

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS_LABELS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
