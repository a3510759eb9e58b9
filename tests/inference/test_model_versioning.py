"""Switching the model is configuration, not code: another ONNX file with the same metadata contract (other
version, label order, input size, channels, normalisation) drops in and is reported by its version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import pytest

from inference.pipeline import Pipeline, get_pipeline, reset_pipeline
from inference.resources import REPO_ROOT

from .conftest import FER2013_LABELS, build_contract_model

# The next model could differ in every way the contract allows: its labels in another order with an extra
# class, colour 64 px input, per-channel normalisation, a differently named output tensor.
NEXT_LABELS = ["surprise", "contempt", "neutral", "happy", "sad", "fear", "disgust", "angry"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("model_versions")
    current = build_contract_model(
        folder / "current.onnx",
        FER2013_LABELS,
        [0.0] * 7,
        [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0],  # always "happy"
        version="emotion-current",
    )
    biases = {label: 0.0 for label in NEXT_LABELS} | {"surprise": 2.0, "contempt": 3.0}
    following = build_contract_model(
        folder / "next.onnx",
        NEXT_LABELS,
        [0.0] * len(NEXT_LABELS),
        [biases[label] for label in NEXT_LABELS],  # "contempt" wins, and is kept (then "surprise")
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
        assert before.primary_face.dominant == "happy" and after.primary_face.dominant == "contempt"
        # the label order with an extra class is the new model's own: all 8 kept, in its order
        assert list(before.primary_face.emotions) == FER2013_LABELS
        assert list(after.primary_face.emotions) == NEXT_LABELS == list(following.labels)
        assert after.primary_face.probabilities.shape == (8,)
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
    assert seen == [("emotion-current", "happy"), ("emotion-next", "contempt")]


def test_the_cli_follows_the_setting(
    models: dict, yunet_path: Path, face_frames: list, tmp_path: Path
) -> None:
    from .test_inference_cli import run_cli

    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_frames[0])
    for name, dominant, labels in (("current", "happy", FER2013_LABELS), ("next", "contempt", NEXT_LABELS)):
        env = {"PORTAL_MODEL_PATH": str(models[name]), "PORTAL_FACE_DETECTOR": str(yunet_path)}
        result = run_cli("analyze", str(image), "--json", env=env)
        assert result.returncode == 0, result.stderr
        face = json.loads(result.stdout)["faces"][0]
        assert face["dominant"] == dominant and list(face["emotions"]) == labels


def test_a_broken_replacement_fails_at_load_time_not_per_frame(tmp_path: Path) -> None:
    from inference.model import ModelContractError

    labels = [label for label in FER2013_LABELS if label != "neutral"] + ["contempt"]
    duplicated = build_contract_model(
        tmp_path / "duplicated.onnx",
        labels,
        [0.0] * 7,
        [0.0] * 7,
        extra_props={"labels": json.dumps(labels[:-1] + ["happy"])},
    )
    with pytest.raises(ModelContractError, match="distinct"):
        Pipeline(duplicated, "haar")
    too_few = build_contract_model(
        tmp_path / "too_few.onnx",
        labels,
        [0.0] * 7,
        [0.0] * 7,
        extra_props={"labels": json.dumps(labels[:6])},
    )
    with pytest.raises(ModelContractError, match="columns"):
        Pipeline(too_few, "haar")
    with pytest.raises(ModelContractError, match="nosuch"):
        Pipeline(
            build_contract_model(tmp_path / "fine.onnx", labels, [0.0] * 7, [0.0] * 7),
            "haar",
            output="nosuch",
        )


def test_a_replacement_without_fer2013s_labels_loads(tmp_path: Path) -> None:
    """The loader no longer asks for FER2013's seven names: "neutral" may be missing, "contempt" present."""
    labels = [label for label in FER2013_LABELS if label != "neutral"] + ["contempt"]
    pipeline = Pipeline(
        build_contract_model(tmp_path / "no_neutral.onnx", labels, [0.0] * 7, [0.0] * 7), "haar"
    )
    assert pipeline.labels == tuple(labels)
