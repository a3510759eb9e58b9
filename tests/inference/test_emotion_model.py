"""The ONNX emotion model: metadata-driven labels in the model's own order, batch-invariant probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inference.model import EmotionModel, ModelContractError, has_int8_dot_product

from .conftest import FER2013_LABELS, SHUFFLED_LABELS, build_contract_model

DARK, BRIGHT = np.zeros((1, 48, 48), np.uint8), np.full((1, 48, 48), 255, np.uint8)


def test_labels_come_from_metadata_and_keep_the_model_order(contract_model_path: Path) -> None:
    model = EmotionModel(contract_model_path)
    assert model.labels == model.metadata.labels == tuple(SHUFFLED_LABELS)  # not re-ordered
    assert model.version == "contract-test-1"
    dark_p, bright_p = model.predict(DARK)[0], model.predict(BRIGHT)[0]
    assert dark_p.shape == bright_p.shape == (len(SHUFFLED_LABELS),)
    # The synthetic model makes "happy" rise and "sad" fall with brightness: columns are the model's own.
    happy, sad = model.labels.index("happy"), model.labels.index("sad")
    assert (happy, sad) == (1, 4)
    assert bright_p[happy] > dark_p[happy] and bright_p[sad] < dark_p[sad]
    assert model.labels[int(np.argmax(bright_p))] == "happy"
    assert model.labels[int(np.argmax(dark_p))] == "sad"
    assert model.output_name == "probabilities" and model.valence_weights is None
    assert list(model.metadata.outputs) == ["probabilities"]


def test_input_size_and_normalisation_come_from_metadata(tmp_path: Path) -> None:
    path = build_contract_model(tmp_path / "m64.onnx", FER2013_LABELS, [0.0] * 7, [0.0] * 7, input_size=64)
    model = EmotionModel(path)
    assert model.input_size == 64 and model.input_channels == 1
    x = model.preprocess(np.array([[[0, 255]]], np.uint8).repeat(64, 1).repeat(32, 2))
    assert x.shape == (1, 1, 64, 64)
    np.testing.assert_allclose([x.min(), x.max()], [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25], atol=1e-6)
    with pytest.raises(ValueError, match="64x64"):
        model.predict(np.zeros((1, 48, 48), np.uint8))


def test_a_colour_model_gets_colour_crops_through_the_pipeline(
    tmp_path: Path, yunet_path: Path, face_frames: list
) -> None:
    from inference.pipeline import Pipeline

    path = build_contract_model(tmp_path / "rgb.onnx", FER2013_LABELS, [1.0] * 7, [0.0] * 7, channels=3)
    pipeline = Pipeline(path, yunet_path)
    assert pipeline.model.input_channels == 3
    readings = pipeline.analyze_images([face_frames[0], np.zeros((120, 160, 3), np.uint8)])
    assert len(readings[0].faces) == 1 and readings[1].faces == []
    assert list(readings[0].primary_face.emotions) == FER2013_LABELS
    x = pipeline.model.preprocess(np.zeros((2, 48, 48, 3), np.uint8))
    assert x.shape == (2, 3, 48, 48)


def test_probabilities_sum_to_one_and_batch_equals_single(contract_model_path: Path) -> None:
    model = EmotionModel(contract_model_path, max_batch=4)  # several session calls for 10 crops
    crops = np.random.default_rng(0).integers(0, 256, (10, 48, 48), dtype=np.uint8)
    batch = model.predict(crops)
    assert batch.shape == (10, len(model.labels)) == (10, 7) and batch.dtype == np.float32
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([model.predict(crop[None]) for crop in crops])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    assert model.predict(crops[:0]).shape == (0, 7)


def test_probabilities_are_renormalised_for_quantised_models(tmp_path: Path) -> None:
    """An int8 softmax moves in steps of 1/255: its rows sum to 0.99..1.0; readings must still sum to 1."""
    weights = [0.0, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0]
    exact = build_contract_model(tmp_path / "exact.onnx", FER2013_LABELS, weights, [0.0] * 7)
    short = build_contract_model(
        tmp_path / "short.onnx", FER2013_LABELS, weights, [0.0] * 7, output_scale=0.99
    )
    crops = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    quantised = EmotionModel(short).predict(crops)
    np.testing.assert_allclose(quantised.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(quantised, EmotionModel(exact).predict(crops), atol=1e-6)


def test_a_model_without_contract_metadata_is_rejected(contract_model_path: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(contract_model_path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"labels": json.dumps(FER2013_LABELS)})
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelContractError, match="input_size"):
        EmotionModel(tmp_path / "bare.onnx")


def test_session_uses_the_configured_thread_count(contract_model_path: Path) -> None:
    model = EmotionModel(contract_model_path)
    assert isinstance(model.session, ort.InferenceSession)
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert (
        EmotionModel(contract_model_path, intra_op_threads=2)
        .session.get_session_options()
        .intra_op_num_threads
        == 2
    )


# --- the shipped model ---------------------------------------------------------------------------------


def test_shipped_model_honours_the_contract(real_model_path: Path) -> None:
    """Whatever its label set (FER2013's 7 or FER+'s 8): every output it describes reads the same way."""
    model = EmotionModel(real_model_path)
    assert model.labels == model.metadata.labels and "happy" in model.labels
    assert len(set(model.labels)) == len(model.labels)
    assert model.version
    assert next(iter(model.metadata.outputs)) == model.output_name == model.metadata.output
    crops = np.random.default_rng(1).integers(0, 256, (5, model.input_size, model.input_size), dtype=np.uint8)
    if model.input_channels == 3:
        crops = np.repeat(crops[..., None], 3, axis=3)
    for name, spec in model.metadata.outputs.items():
        head = EmotionModel(real_model_path, output=name)
        assert head.labels == spec.labels and head.output_name == name
        batch = head.predict(crops)
        assert batch.shape == (5, len(spec.labels))
        np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-4)
        singles = np.concatenate([head.predict(crop[None]) for crop in crops])
        np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_shipped_model_sees_happiness_in_fer2013_happy_faces(real_model_path: Path, fer2013: dict) -> None:
    """A sanity check of the real model on held-out rows, not an accuracy target."""
    model = EmotionModel(real_model_path)
    private = fer2013["usage"] == "PrivateTest"
    fer_happy = FER2013_LABELS.index("happy")  # the dataset's label index
    happy_rows = np.flatnonzero(private & (fer2013["labels"] == fer_happy))[:300]
    other_rows = np.flatnonzero(private & (fer2013["labels"] != fer_happy))[:300]
    happy = model.labels.index("happy")  # the model's column
    p_on_happy = model.predict(fer2013["images"][happy_rows])[:, happy].mean()
    p_on_others = model.predict(fer2013["images"][other_rows])[:, happy].mean()
    assert p_on_happy > 0.5
    assert p_on_happy > p_on_others + 0.3


def test_every_output_of_the_shipped_model_names_its_classes_like_fer2013(real_model_path: Path) -> None:
    """Readings are matched by label name (smile score = p("happy"), evaluation by class name): every head of
    the shipped file must use FER2013's names for the classes FER2013 has."""
    model = EmotionModel(real_model_path)
    for name, spec in model.metadata.outputs.items():
        assert not {"happiness", "sadness", "anger"} & set(spec.labels), f"{name}: {spec.labels}"
        assert "happy" in spec.labels, f"{name}: {spec.labels}"


def test_int8_kernels_follow_the_cpu_and_both_paths_read_alike(real_model_path: Path, fer2013: dict) -> None:
    """Fused int8 kernels only where the CPU has VNNI (they saturate without it); either way the shipped
    model reads FER2013 faces alike, and the unfused path is the model's own quantized arithmetic."""
    assert EmotionModel(real_model_path).fused_int8 == has_int8_dot_product()
    crops = fer2013["images"][:128]
    unfused = EmotionModel(real_model_path, fused_int8=False).predict(crops)
    fused = EmotionModel(real_model_path, fused_int8=True).predict(crops)
    assert unfused.shape == fused.shape and np.allclose(unfused.sum(1), 1, atol=1e-4)
    if has_int8_dot_product():
        assert (unfused.argmax(1) == fused.argmax(1)).mean() > 0.97
