"""Fixtures for the inference tests: shared material (skip, or fail under CI=true, when missing), the
shipped model, and small synthetic ONNX models that follow the metadata contract."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.resources import YUNET_FILENAME, default_model_path, shared_dir
from tests.model_files import FER2013_LABELS, FERPLUS_LABELS, Head, build_contract_model
from tests.support.services import require_file

__all__ = ["FER2013_LABELS", "FERPLUS_LABELS", "Head", "build_contract_model"]


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_file(shared_dir(), "shared material directory")


@pytest.fixture(scope="session")
def yunet_path(shared: Path) -> Path:
    return require_file(shared / "models" / YUNET_FILENAME, "YuNet face detector")


@pytest.fixture(scope="session")
def face_video_path(shared: Path) -> Path:
    return require_file(shared / "media" / "liveportrait_d3.mp4", "face video")


@pytest.fixture(scope="session")
def face_frames(face_video_path: Path) -> list[np.ndarray]:
    """Eight BGR frames spread over the real face video (neutral -> frown -> surprise)."""
    capture = cv2.VideoCapture(str(face_video_path))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 300
    frames = []
    for index in np.linspace(0, frame_count - 1, 8).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(frame)
    capture.release()
    assert len(frames) >= 6, "could not read frames from the face video"
    return frames


@pytest.fixture(scope="session")
def fer2013(shared: Path) -> dict[str, np.ndarray]:
    with np.load(require_file(shared / "data" / "fer2013.npz", "FER2013")) as data:
        return {"images": data["images"], "labels": data["labels"], "usage": data["usage"]}


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    return require_file(default_model_path(), "shipped emotion model (inference/models/emotion.onnx)")


# Model label order deliberately differs from FER2013's; "happy" rises with brightness, "sad" falls.
SHUFFLED_LABELS = ["neutral", "happy", "surprise", "angry", "sad", "fear", "disgust"]


@pytest.fixture(scope="session")
def contract_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = {label: 0.0 for label in FER2013_LABELS} | {"happy": 3.0, "sad": -3.0}
    biases = {label: 0.1 * i for i, label in enumerate(FER2013_LABELS)}
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "contract.onnx",
        SHUFFLED_LABELS,
        [weights[label] for label in SHUFFLED_LABELS],
        [biases[label] for label in SHUFFLED_LABELS],
        version="contract-test-1",
    )


# An 8-label model (FER2013's seven + contempt, in FER+ order): "contempt" wins on dark crops, "happy" on
# bright ones, so the eighth column is visibly kept end to end.
EIGHT_LABELS = FERPLUS_LABELS
EIGHT_WEIGHTS = {label: 0.0 for label in EIGHT_LABELS} | {"happy": 4.0, "contempt": -4.0}
EIGHT_BIASES = {label: 0.05 * i for i, label in enumerate(EIGHT_LABELS)}


@pytest.fixture(scope="session")
def eight_label_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "eight.onnx",
        EIGHT_LABELS,
        [EIGHT_WEIGHTS[label] for label in EIGHT_LABELS],
        [EIGHT_BIASES[label] for label in EIGHT_LABELS],
        version="eight-test-1",
        extra_props={"valence_weights": json.dumps({"happy": 1.0, "contempt": -0.6})},
    )


# A two-output model: the default output "probabilities" (SHUFFLED_LABELS, "happy" rises with brightness)
# and "ferplus_probabilities" (8 labels, "happy" FALLS with brightness), each with its own valence weights.
TWO_HEAD_DEFAULT_WEIGHTS = {"happy": 1.0, "sad": -1.0}
TWO_HEAD_SECOND_WEIGHTS = {"happy": 0.5, "contempt": -2.0}


def two_head_second() -> Head:
    weights = {label: 0.0 for label in FERPLUS_LABELS} | {"happy": -4.0, "surprise": 4.0}
    return Head(
        "ferplus_probabilities",
        FERPLUS_LABELS,
        [weights[label] for label in FERPLUS_LABELS],
        [0.05 * i for i in range(len(FERPLUS_LABELS))],
    )


@pytest.fixture(scope="session")
def two_head_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = {label: 0.0 for label in SHUFFLED_LABELS} | {"happy": 3.0, "sad": -3.0}
    second = two_head_second()
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "two_heads.onnx",
        SHUFFLED_LABELS,
        [weights[label] for label in SHUFFLED_LABELS],
        [0.1 * i for i in range(len(SHUFFLED_LABELS))],
        version="two-heads-test-1",
        second=second,
        extra_props={
            "valence_weights": json.dumps(TWO_HEAD_DEFAULT_WEIGHTS),
            "extra_outputs": json.dumps(
                {second.name: {"labels": second.labels, "valence_weights": TWO_HEAD_SECOND_WEIGHTS}}
            ),
        },
    )
