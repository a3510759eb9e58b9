"""Facial-coding inference: face detection, alignment and emotion classification (no Django here).

Public entry points: :func:`inference.pipeline.get_pipeline` / :class:`inference.pipeline.Pipeline`.
Readings carry the model's own labels, in the model's own order (its ONNX metadata: `Pipeline.labels`).
"""
