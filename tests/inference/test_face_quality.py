"""Per-face quality signals and the optional valence score."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from inference import EMOTIONS
from inference.pipeline import Pipeline
from inference.quality import crop_statistics

from .conftest import build_contract_model


def test_crop_statistics_rank_blur_darkness_and_flatness() -> None:
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    blurred = cv2.GaussianBlur(textured, (9, 9), 3)
    dark = (textured // 8).astype(np.uint8)
    flat = np.full((48, 48), 128, np.uint8)
    stats = crop_statistics(np.stack([textured, blurred, dark, flat]))
    brightness, contrast, sharpness = stats.T
    assert sharpness[1] < sharpness[0] / 3
    assert brightness[2] < 0.1 < brightness[0]
    assert contrast[3] == 0 and sharpness[3] == 0
    assert crop_statistics(np.zeros((0, 48, 48), np.uint8)).shape == (0, 3)


def test_readings_carry_quality(contract_model_path: Path, yunet_path: Path, face_frames: list) -> None:
    pipeline = Pipeline(contract_model_path, yunet_path)
    frame = face_frames[0]
    sharp, blurred = pipeline.analyze_images([frame, cv2.GaussianBlur(frame, (0, 0), 4)])
    quality = sharp.primary_face.quality
    assert 0.2 < quality.face_fraction < 0.8  # the face fills a good part of the 512x512 frame
    assert 0.1 < quality.brightness < 0.9 and quality.contrast > 0.05
    assert abs(quality.roll_degrees) < 20
    assert blurred.primary_face.quality.sharpness < quality.sharpness
    assert set(quality.as_dict()) == {"brightness", "contrast", "sharpness", "face_fraction", "roll_degrees"}
    assert sharp.primary_face.valence is None  # that model defines no valence weights


def test_valence_uses_the_weights_from_metadata(tmp_path: Path, yunet_path: Path, face_frames: list) -> None:
    weights = {"happy": 1.0, "sad": -0.8, "angry": -0.8}
    path = build_contract_model(
        tmp_path / "valence.onnx",
        list(EMOTIONS),
        [0.5] * 7,
        [0.1 * i for i in range(7)],
        extra_props={"valence_weights": json.dumps(weights)},
    )
    face = Pipeline(path, yunet_path).analyze_images(face_frames[:1])[0].primary_face
    expected = sum(face.emotions[label] * weight for label, weight in weights.items())
    assert abs(face.valence - expected) < 1e-5
