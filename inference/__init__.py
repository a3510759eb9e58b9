"""Facial-coding inference: face detection, alignment and emotion classification (no Django here).

Public entry points: :func:`inference.pipeline.get_pipeline` / :class:`inference.pipeline.Pipeline`.
"""

# FER2013 label order. Every probability vector this package returns is in this order, whatever order the
# ONNX model emits (the loader re-orders by label name from the model's metadata).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

__all__ = ["EMOTIONS"]
