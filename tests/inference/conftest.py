"""Fixtures for the inference tests: shared material (skip, or fail under CI=true, when missing), the
shipped model, and small synthetic ONNX models that follow the metadata contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference import EMOTIONS
from inference.resources import YUNET_FILENAME, default_model_path, shared_dir


def require(path: Path, what: str) -> Path:
    """`path` if it exists; otherwise skip, or fail under CI where the material must be present."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (set PORTAL_SHARED_DIR / PORTAL_MODEL_PATH)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared() -> Path:
    return require(shared_dir(), "shared material directory")


@pytest.fixture(scope="session")
def yunet_path(shared: Path) -> Path:
    return require(shared / "models" / YUNET_FILENAME, "YuNet face detector")


@pytest.fixture(scope="session")
def face_video_path(shared: Path) -> Path:
    return require(shared / "media" / "liveportrait_d3.mp4", "face video")


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
    with np.load(require(shared / "data" / "fer2013.npz", "FER2013")) as data:
        return {"images": data["images"], "labels": data["labels"], "usage": data["usage"]}


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    return require(default_model_path(), "shipped emotion model (inference/models/emotion.onnx)")


def build_contract_model(
    path: Path,
    labels: list[str],
    weights: list[float],
    biases: list[float],
    input_size: int = 48,
    version: str = "test-0",
    output_name: str = "probabilities",
    extra_props: dict[str, str] | None = None,
    channels: int = 1,
    output_scale: float = 1.0,
) -> Path:
    """A tiny ONNX model honouring the metadata contract: softmax(mean(normalised input) * w + b).

    Its output depends on brightness only, which makes label re-ordering and batching easy to check.
    """
    onnx = pytest.importorskip("onnx")
    helper, tensor_proto = onnx.helper, onnx.TensorProto
    count = len(labels)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["scaled"]),
            helper.make_node("Add", ["scaled", "biases"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["softmax"], axis=1),
            # output_scale != 1 imitates a quantised model whose probabilities do not quite sum to 1
            helper.make_node("Mul", ["softmax", "output_scale"], [output_name]),
        ],
        "contract_model",
        [helper.make_tensor_value_info("input", tensor_proto.FLOAT, ["N", channels, input_size, input_size])],
        [helper.make_tensor_value_info(output_name, tensor_proto.FLOAT, ["N", count])],
        initializer=[
            helper.make_tensor("shape", tensor_proto.INT64, [2], [-1, 1]),
            helper.make_tensor("weights", tensor_proto.FLOAT, [1, count], weights),
            helper.make_tensor("biases", tensor_proto.FLOAT, [count], biases),
            helper.make_tensor("output_scale", tensor_proto.FLOAT, [], [output_scale]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "labels": json.dumps(labels),
            "input_size": str(input_size),
            "input_channels": str(channels),
            "normalization": json.dumps({"scale": 1 / 255, "mean": 0.5, "std": 0.25}),
            "output": output_name,
            "version": version,
            "metrics": json.dumps({"note": "synthetic test model"}),
            "trained_on": "nothing",
        }
        | (extra_props or {}),
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# Model label order deliberately differs from EMOTIONS; "happy" rises with brightness, "sad" falls.
SHUFFLED_LABELS = ["neutral", "happy", "surprise", "angry", "sad", "fear", "disgust"]


@pytest.fixture(scope="session")
def contract_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = {label: 0.0 for label in EMOTIONS} | {"happy": 3.0, "sad": -3.0}
    biases = {label: 0.1 * i for i, label in enumerate(EMOTIONS)}
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "contract.onnx",
        SHUFFLED_LABELS,
        [weights[label] for label in SHUFFLED_LABELS],
        [biases[label] for label in SHUFFLED_LABELS],
        version="contract-test-1",
    )
