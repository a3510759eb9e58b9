"""Per-face quality signals and the optional valence score."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.align import pose_angles
from inference.detect import Detection
from inference.pipeline import FaceReading, FrameReading, Pipeline
from inference.quality import (
    BLURRY,
    NO_FACE,
    NOT_FRONTAL,
    PROBLEM_CODES,
    TOO_BRIGHT,
    TOO_DARK,
    TOO_SMALL,
    TOO_SMALL_BELOW_PX,
    FaceQuality,
    crop_statistics,
    frame_problems,
    quality_problems,
)

from .conftest import FER2013_LABELS, build_contract_model


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
    assert set(quality.as_dict()) == {
        "brightness",
        "contrast",
        "sharpness",
        "face_fraction",
        "roll_degrees",
        "face_px",
        "yaw_degrees",
        "score",
    }
    assert 0.0 <= quality.score <= 1.0
    assert sharp.primary_face.valence is None  # that model defines no valence weights


def test_valence_uses_the_weights_from_metadata(tmp_path: Path, yunet_path: Path, face_frames: list) -> None:
    weights = {"happy": 1.0, "sad": -0.8, "angry": -0.8}
    path = build_contract_model(
        tmp_path / "valence.onnx",
        FER2013_LABELS,
        [0.5] * 7,
        [0.1 * i for i in range(7)],
        extra_props={"valence_weights": json.dumps(weights)},
    )
    face = Pipeline(path, yunet_path).analyze_images(face_frames[:1])[0].primary_face
    expected = sum(face.emotions[label] * weight for label, weight in weights.items())
    assert abs(face.valence - expected) < 1e-5


# --- usability score and problem codes ----------------------------------------------------------------------


def _good(**changes: float) -> FaceQuality:
    """A clearly usable face (every factor 1), with some signals changed."""
    values = dict(
        brightness=0.4, contrast=0.15, sharpness=0.06, face_fraction=0.3, roll_degrees=2.0, face_px=150.0
    )
    values["yaw_degrees"] = 5.0
    return replace(FaceQuality(**values), **changes)


def _primary_score(pipeline: Pipeline, image: np.ndarray) -> float:
    reading = pipeline.analyze_images([image])[0]
    assert reading.primary_face is not None, "the face must still be found"
    return reading.primary_face.quality.score


def _non_increasing_and_drops(scores: list[float]) -> None:
    assert all(later <= earlier + 1e-9 for earlier, later in zip(scores, scores[1:], strict=False)), scores
    assert scores[-1] < scores[0] - 0.2, scores


def test_score_is_in_unit_range_and_one_for_a_good_face() -> None:
    assert _good().score == 1.0
    assert _good().factors() == {"size": 1.0, "brightness": 1.0, "sharpness": 1.0, "frontal": 1.0}
    assert _good(brightness=0.0).score == 0.0
    assert quality_problems(_good()) == []
    assert "score" in _good().as_dict()


def test_score_falls_with_blur(contract_model_path: Path, yunet_path: Path, face_frames: list) -> None:
    pipeline = Pipeline(contract_model_path, yunet_path)
    frame = face_frames[0]
    scores = [_primary_score(pipeline, frame)] + [
        _primary_score(pipeline, cv2.GaussianBlur(frame, (0, 0), sigma)) for sigma in (3, 5, 7, 9)
    ]
    _non_increasing_and_drops(scores)
    assert scores[0] > 0.9  # the sharp, well-lit, frontal face of the clip is fully usable
    # The same at the participant capture size, through JPEG as in production.
    small = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    encoded = [
        cv2.imencode(".jpg", cv2.GaussianBlur(small, (0, 0), s) if s else small)[1] for s in (0, 2, 3, 5)
    ]
    readings = pipeline.analyze_jpegs([blob.tobytes() for blob in encoded])
    _non_increasing_and_drops([r.primary_face.quality.score for r in readings])
    assert BLURRY in quality_problems(readings[-1].primary_face.quality)
    assert quality_problems(readings[0].primary_face.quality) == []


def test_score_falls_with_darkness(contract_model_path: Path, yunet_path: Path, face_frames: list) -> None:
    pipeline = Pipeline(contract_model_path, yunet_path)
    frame = face_frames[0]
    dimmed = [(frame * gain).astype(np.uint8) for gain in (1.0, 0.6, 0.4, 0.25, 0.15)]
    readings = pipeline.analyze_images(dimmed)
    _non_increasing_and_drops([r.primary_face.quality.score for r in readings])
    assert TOO_DARK in quality_problems(readings[-1].primary_face.quality)
    # Darkness is not mistaken for blur: sharpness is measured relative to contrast.
    assert BLURRY not in quality_problems(readings[-2].primary_face.quality)
    overexposed = np.clip(frame.astype(np.float32) * 3.5 + 40, 0, 255).astype(np.uint8)
    bright = pipeline.analyze_images([overexposed])[0].primary_face.quality
    assert bright.score < readings[0].primary_face.quality.score


def test_score_falls_with_face_size(contract_model_path: Path, yunet_path: Path, face_frames: list) -> None:
    pipeline = Pipeline(contract_model_path, yunet_path)
    frame = face_frames[0]
    qualities = []
    for side in (200, 120, 80, 60, 50):  # the whole 512 px clip frame pasted into a 320x240 webcam frame
        canvas = np.full((240, 320, 3), frame[5, 5], np.uint8)
        canvas[10 : 10 + side, 60 : 60 + side] = cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA)
        reading = pipeline.analyze_images([canvas])[0]
        assert reading.primary_face is not None
        qualities.append(reading.primary_face.quality)
    _non_increasing_and_drops([q.score for q in qualities])
    assert [TOO_SMALL in quality_problems(q) for q in qualities] == [False, False, False, True, True]


def test_yaw_from_landmarks(contract_model_path: Path, yunet_path: Path, face_frames: list) -> None:
    eyes = np.array([[100.0, 100.0], [160.0, 100.0]])
    mouth = np.array([[110.0, 170.0], [150.0, 170.0]])

    def detection(nose_x: float, roll: float = 0.0) -> Detection:
        points = np.vstack([eyes, [[nose_x, 135.0]], mouth]).astype(np.float32)
        if roll:  # rotating the whole face must not change its yaw
            matrix = cv2.getRotationMatrix2D((130.0, 130.0), roll, 1.0)
            points = (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
        return Detection((80, 60, 100, 130), 0.9, points)

    frontal, right, left, rolled = pose_angles(
        [detection(130), detection(145), detection(115), detection(145, 30)]
    )[0]
    assert abs(frontal) < 1e-3
    assert right > 20 and left == pytest.approx(
        -right, abs=1e-3
    )  # 15 px of 60 px: 0.25 / 0.5 -> 26.6 degrees
    assert rolled == pytest.approx(right, abs=0.5)
    assert np.isnan(pose_angles([Detection((0, 0, 50, 50), 0.9)])[0][0])  # Haar: no landmarks, no estimate
    # On the real clip: the frame and its mirror image give opposite yaws.
    pipeline = Pipeline(contract_model_path, yunet_path)
    turned = max(
        face_frames, key=lambda f: abs(pipeline.analyze_images([f])[0].primary_face.quality.yaw_degrees)
    )
    upright, mirrored = pipeline.analyze_images([turned, cv2.flip(turned, 1)])
    yaw = upright.primary_face.quality.yaw_degrees
    assert abs(yaw) > 8 and np.sign(yaw) == -np.sign(mirrored.primary_face.quality.yaw_degrees)


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        ({"face_px": 30.0}, [TOO_SMALL]),
        ({"face_px": TOO_SMALL_BELOW_PX + 1}, []),
        ({"brightness": 0.08}, [TOO_DARK]),
        ({"brightness": 0.88}, [TOO_BRIGHT]),
        ({"sharpness": 0.015}, [BLURRY]),  # 0.015 / 0.15 = 0.1 relative sharpness
        ({"yaw_degrees": -40.0}, [NOT_FRONTAL]),
        ({"roll_degrees": 45.0}, [NOT_FRONTAL]),
        ({"roll_degrees": 25.0, "yaw_degrees": 20.0}, []),  # alignment levels a moderate roll
        ({"contrast": 0.0, "sharpness": 0.0}, [BLURRY]),  # a flat crop carries no detail
        ({"face_px": 30.0, "brightness": 0.05, "yaw_degrees": 50.0}, [TOO_SMALL, NOT_FRONTAL, TOO_DARK]),
    ],
)
def test_problem_codes(changes: dict[str, float], problems: list[str]) -> None:
    quality = _good(**changes)
    assert quality_problems(quality) == problems
    assert set(problems) <= set(PROBLEM_CODES)
    factors = quality.factors()
    # A code fires exactly where its factor falls under 0.5; then the score is under 0.5 too.
    assert bool(problems) == (min(factors.values()) < 0.5) == (quality.score < 0.5)


def test_frame_problems() -> None:
    assert frame_problems(FrameReading(faces=[])) == [NO_FACE]
    assert frame_problems(FrameReading(faces=[], error="could not decode image")) == [NO_FACE]
    face = FaceReading((0, 0, 20, 20), 0.9, np.full(7, 1 / 7, np.float32), quality=_good(brightness=0.9))
    assert frame_problems(FrameReading(faces=[face])) == [TOO_BRIGHT]


def test_crop_statistics_do_not_depend_on_the_model_input_size(face_frames: list) -> None:
    """The score stored with a reading must mean the same after a model with another input size ships."""
    grey = cv2.cvtColor(face_frames[0][100:460, 110:470], cv2.COLOR_BGR2GRAY)
    at_48 = cv2.resize(grey, (48, 48), interpolation=cv2.INTER_AREA)[None]
    at_96 = cv2.resize(grey, (96, 96), interpolation=cv2.INTER_AREA)[None]
    colour_64 = cv2.resize(face_frames[0][100:460, 110:470], (64, 64), interpolation=cv2.INTER_AREA)[None]
    reference = crop_statistics(at_48)[0]
    for crops in (at_96, colour_64):
        assert np.allclose(crop_statistics(crops)[0], reference, rtol=0.1, atol=0.01)
