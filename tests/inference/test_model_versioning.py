"""Switching the model is configuration, not code: another ONNX file with the same metadata contract (other
version, label order, input size, channels, normalisation) drops in and is reported by its version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import pytest

from inference import EMOTIONS
from inference.pipeline import Pipeline, get_pipeline, reset_pipeline
from inference.resources import REPO_ROOT

from .conftest import build_contract_model

# The next model could differ in every way the contract allows: FER+-style label names in another order with
# an extra class, colour 64 px input, per-channel normalisation, a differently named output tensor.
NEXT_LABELS = ["surprise", "contempt", "neutral", "happy", "sad", "fear", "disgust", "angry"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("model_versions")
    current = build_contract_model(
        folder / "current.onnx",
        list(EMOTIONS),
        [0.0] * 7,
        [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0],  # always "happy"
        version="emotion-current",
    )
    biases = {label: 0.0 for label in NEXT_LABELS} | {"surprise": 2.0, "contempt": 3.0}
    following = build_contract_model(
        folder / "next.onnx",
        NEXT_LABELS,
        [0.0] * len(NEXT_LABELS),
        [biases[label] for label in NEXT_LABELS],  # "contempt" wins but is dropped: then "surprise"
        input_size=64,
        channels=3,
        version="emotion-next",
        output_name="emotion_probs",
        extra_props={
            "normalization": json.dumps(
                {"scale": 1 / 255, "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.25]}
            ),
            "valence_weights": json.dumps({"happy": 1.0, "sad": -1.0}),
        },
    )
    return {"current": current, "next": following}


def test_pipeline_reads_everything_from_the_new_file(
    models: dict, yunet_path: Path, face_frames: list
) -> None:
    current, following = Pipeline(models["current"], yunet_path), Pipeline(models["next"], yunet_path)
    assert (current.model_version, following.model_version) == ("emotion-current", "emotion-next")
    assert (following.model.input_size, following.model.input_channels) == (64, 3)
    frames = face_frames[:3]
    for before, after in zip(current.analyze_images(frames), following.analyze_images(frames), strict=True):
        assert before.primary_face.dominant == "happy" and after.primary_face.dominant == "surprise"
        assert list(after.primary_face.emotions) == list(EMOTIONS)  # still 7 labels in contract order
        assert abs(sum(after.primary_face.emotions.values()) - 1) < 1e-5
        assert before.primary_face.box == after.primary_face.box  # detection does not depend on the model
        assert before.primary_face.valence is None and after.primary_face.valence is not None
        # The stored quality score keeps its meaning: measured on a 48 px grey crop whatever the model input.
        assert after.primary_face.quality.score == pytest.approx(before.primary_face.quality.score, abs=0.05)
        assert after.primary_face.quality.brightness == pytest.approx(
            before.primary_face.quality.brightness, abs=0.02
        )


def test_the_setting_switches_the_model_with_no_code_change(
    models: dict, yunet_path: Path, face_frames: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PORTAL_MODEL_PATH (absolute, or relative to the repo root) is all a deployment changes."""
    monkeypatch.setenv("PORTAL_FACE_DETECTOR", str(yunet_path))
    jpeg = cv2.imencode(".jpg", cv2.resize(face_frames[0], (320, 240)))[1].tobytes()
    seen = []
    try:
        for path in (models["current"], Path(os.path.relpath(models["next"], REPO_ROOT))):
            monkeypatch.setenv("PORTAL_MODEL_PATH", str(path))
            reset_pipeline()  # what a worker restart does
            pipeline = get_pipeline()
            reading = pipeline.analyze_jpegs([jpeg])[0]
            seen.append((pipeline.model_version, reading.primary_face.dominant))
    finally:
        reset_pipeline()
    assert seen == [("emotion-current", "happy"), ("emotion-next", "surprise")]


def test_the_cli_follows_the_setting(
    models: dict, yunet_path: Path, face_frames: list, tmp_path: Path
) -> None:
    from .test_inference_cli import run_cli

    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_frames[0])
    for name, dominant in (("current", "happy"), ("next", "surprise")):
        env = {"PORTAL_MODEL_PATH": str(models[name]), "PORTAL_FACE_DETECTOR": str(yunet_path)}
        result = run_cli("analyze", str(image), "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["faces"][0]["dominant"] == dominant


def test_a_broken_replacement_fails_at_load_time_not_per_frame(tmp_path: Path) -> None:
    from inference.model import ModelContractError

    path = build_contract_model(
        tmp_path / "no_neutral.onnx",
        [label for label in EMOTIONS if label != "neutral"] + ["contempt"],
        [0.0] * 7,
        [0.0] * 7,
    )
    with pytest.raises(ModelContractError, match="neutral"):
        Pipeline(path, "haar")
