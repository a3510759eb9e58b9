"""Labels and outputs come from the model's metadata: any label set in any order, every column kept, and any
output the metadata describes (`extra_outputs`) readable instead of the default one (`output=`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.model import EmotionModel, ModelContractError, OutputSpec

from .conftest import (
    EIGHT_LABELS,
    FER2013_LABELS,
    FERPLUS_LABELS,
    SHUFFLED_LABELS,
    TWO_HEAD_DEFAULT_WEIGHTS,
    TWO_HEAD_SECOND_WEIGHTS,
    Head,
    build_contract_model,
    two_head_second,
)

DARK, BRIGHT = np.zeros((1, 48, 48), np.uint8), np.full((1, 48, 48), 255, np.uint8)
SECOND = "ferplus_probabilities"


def _crops(n: int = 9, size: int = 48) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, size, size), dtype=np.uint8)


def _expected_valence(probabilities: np.ndarray, labels: tuple[str, ...], weights: dict) -> np.ndarray:
    return sum(probabilities[:, labels.index(label)] * weight for label, weight in weights.items())


# --- an eighth class is kept --------------------------------------------------------------------------------


def test_an_eight_label_model_keeps_all_eight_columns(eight_label_model_path: Path) -> None:
    model = EmotionModel(eight_label_model_path, max_batch=4)
    assert model.labels == tuple(EIGHT_LABELS) and len(model.labels) == 8
    batch = model.predict(_crops())
    assert batch.shape == (9, 8) and batch.dtype == np.float32
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-5)
    assert model.predict(_crops()[:0]).shape == (0, 8)
    # "contempt", the class FER2013 lacks, wins on a dark crop: it is neither dropped nor folded away.
    assert model.labels[int(np.argmax(model.predict(DARK)[0]))] == "contempt"
    assert model.labels[int(np.argmax(model.predict(BRIGHT)[0]))] == "happy"
    assert model.valence_weights == {"happy": 1.0, "contempt": -0.6}
    np.testing.assert_allclose(
        model.valence(batch), _expected_valence(batch, model.labels, model.valence_weights), atol=1e-6
    )


def test_any_label_set_loads_not_only_fer2013s(tmp_path: Path) -> None:
    labels = ["calm", "excited", "bored"]
    model = EmotionModel(build_contract_model(tmp_path / "three.onnx", labels, [1.0, 2.0, 3.0], [0.0] * 3))
    assert model.labels == tuple(labels)
    assert model.predict(_crops(4)).shape == (4, 3)


# --- choosing the output ------------------------------------------------------------------------------------


def test_metadata_lists_every_output_default_first(two_head_model_path: Path) -> None:
    metadata = EmotionModel(two_head_model_path).metadata
    assert metadata.output == "probabilities"
    assert list(metadata.outputs) == ["probabilities", SECOND]
    assert metadata.outputs["probabilities"] == OutputSpec(tuple(SHUFFLED_LABELS), TWO_HEAD_DEFAULT_WEIGHTS)
    assert metadata.outputs[SECOND] == OutputSpec(tuple(FERPLUS_LABELS), TWO_HEAD_SECOND_WEIGHTS)


def test_either_output_is_read_with_its_own_labels_and_valence_weights(two_head_model_path: Path) -> None:
    default = EmotionModel(two_head_model_path)
    explicit = EmotionModel(two_head_model_path, output="probabilities")
    second = EmotionModel(two_head_model_path, output=SECOND, max_batch=4)
    assert (default.output_name, explicit.output_name, second.output_name) == ("probabilities",) * 2 + (
        SECOND,
    )
    assert default.labels == explicit.labels == tuple(SHUFFLED_LABELS)
    assert second.labels == tuple(FERPLUS_LABELS)
    assert default.valence_weights == TWO_HEAD_DEFAULT_WEIGHTS
    assert second.valence_weights == TWO_HEAD_SECOND_WEIGHTS

    crops = _crops()
    first_p, second_p = default.predict(crops), second.predict(crops)
    np.testing.assert_allclose(first_p, explicit.predict(crops), atol=1e-7)
    assert first_p.shape == (9, 7) and second_p.shape == (9, 8)
    np.testing.assert_allclose(second_p.sum(axis=1), 1.0, atol=1e-5)
    # The second output's columns are that tensor's, in its order.
    raw = second.session.run([SECOND], {second.input_name: second.preprocess(crops)})[0]
    np.testing.assert_allclose(second_p, raw / raw.sum(axis=1, keepdims=True), atol=1e-6)
    # The two heads disagree by construction: brightness makes the default happy, the second surprised.
    assert default.labels[int(np.argmax(default.predict(BRIGHT)[0]))] == "happy"
    assert second.labels[int(np.argmax(second.predict(BRIGHT)[0]))] == "surprise"
    assert second.labels[int(np.argmax(second.predict(DARK)[0]))] == "happy"
    # Valence uses the weights of the output read.
    np.testing.assert_allclose(
        default.valence(first_p),
        _expected_valence(first_p, default.labels, TWO_HEAD_DEFAULT_WEIGHTS),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        second.valence(second_p),
        _expected_valence(second_p, second.labels, TWO_HEAD_SECOND_WEIGHTS),
        atol=1e-6,
    )


def test_an_extra_output_listed_by_labels_alone_has_no_valence(tmp_path: Path) -> None:
    path = build_contract_model(
        tmp_path / "plain.onnx", SHUFFLED_LABELS, [0.0] * 7, [0.0] * 7, second=two_head_second()
    )
    model = EmotionModel(path, output=SECOND)
    assert model.labels == tuple(FERPLUS_LABELS)
    assert model.valence_weights is None and model.valence(model.predict(_crops(2))) is None


def test_an_unknown_output_is_a_contract_error(two_head_model_path: Path) -> None:
    with pytest.raises(ModelContractError, match="nosuch"):
        EmotionModel(two_head_model_path, output="nosuch")


def test_an_output_the_metadata_gives_no_labels_is_a_contract_error(tmp_path: Path) -> None:
    path = build_contract_model(
        tmp_path / "undescribed.onnx",
        SHUFFLED_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        second=two_head_second(),
        extra_props={"extra_outputs": json.dumps({})},  # the tensor exists, its labels are not given
    )
    assert EmotionModel(path).labels == tuple(SHUFFLED_LABELS)  # the default output still reads
    with pytest.raises(ModelContractError, match="labels"):
        EmotionModel(path, output=SECOND)


# --- malformed metadata fails at load time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        ["happy", "happy", "sad", "angry", "fear", "disgust", "neutral"],  # duplicate
        [],
        "happy,sad",
        ["happy", "sad", "angry", "fear", "disgust", "neutral", 7],
        ["happy", "sad", "angry", "fear", "disgust", "neutral", ""],
    ],
    ids=["duplicate", "empty", "not-a-list", "not-a-string", "empty-name"],
)
def test_malformed_labels_are_a_contract_error(tmp_path: Path, labels: object) -> None:
    path = build_contract_model(
        tmp_path / "bad.onnx",
        FER2013_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        extra_props={"labels": json.dumps(labels)},
    )
    with pytest.raises(ModelContractError, match="labels"):
        EmotionModel(path)


@pytest.mark.parametrize(
    "labels",
    [FERPLUS_LABELS[:-1] + ["neutral"], []],
    ids=["duplicate", "empty"],
)
def test_malformed_labels_of_an_extra_output_are_a_contract_error(tmp_path: Path, labels: list) -> None:
    path = build_contract_model(
        tmp_path / "bad_extra.onnx",
        SHUFFLED_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        second=two_head_second(),
        extra_props={"extra_outputs": json.dumps({SECOND: {"labels": labels}})},
    )
    with pytest.raises(ModelContractError, match="labels"):
        EmotionModel(path, output=SECOND)


def test_labels_must_match_the_output_width(tmp_path: Path) -> None:
    six = build_contract_model(
        tmp_path / "six.onnx",
        FER2013_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        extra_props={"labels": json.dumps(FER2013_LABELS[:6])},
    )
    with pytest.raises(ModelContractError, match="columns"):
        EmotionModel(six)
    narrow = build_contract_model(
        tmp_path / "narrow.onnx",
        SHUFFLED_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        second=two_head_second(),  # 8 columns
        extra_props={"extra_outputs": json.dumps({SECOND: FER2013_LABELS})},  # 7 labels
    )
    with pytest.raises(ModelContractError, match="columns"):
        EmotionModel(narrow, output=SECOND)


def test_valence_weights_may_only_name_labels_of_their_output(tmp_path: Path) -> None:
    default = build_contract_model(
        tmp_path / "default.onnx",
        FER2013_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        extra_props={"valence_weights": json.dumps({"happy": 1.0, "contempt": -0.6})},  # no contempt here
    )
    with pytest.raises(ModelContractError, match="contempt"):
        EmotionModel(default)
    second = two_head_second()
    extra = build_contract_model(
        tmp_path / "extra.onnx",
        SHUFFLED_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        second=second,
        extra_props={
            "extra_outputs": json.dumps(
                {second.name: {"labels": second.labels, "valence_weights": {"happy": 1.0, "calm": 0.5}}}
            )
        },
    )
    with pytest.raises(ModelContractError, match="calm"):
        EmotionModel(extra, output=SECOND)


def test_a_head_named_like_the_default_output_is_the_default(tmp_path: Path) -> None:
    """`extra_outputs` describing the default output again does not override the default's labels."""
    path = build_contract_model(
        tmp_path / "same.onnx",
        SHUFFLED_LABELS,
        [0.0] * 7,
        [0.0] * 7,
        second=Head("other", FER2013_LABELS, [0.0] * 7, [0.0] * 7),
        extra_props={"extra_outputs": json.dumps({"probabilities": FER2013_LABELS, "other": FER2013_LABELS})},
    )
    model = EmotionModel(path)
    assert model.labels == tuple(SHUFFLED_LABELS)
    assert list(model.metadata.outputs) == ["probabilities", "other"]
