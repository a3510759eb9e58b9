"""Horizontal-flip averaging folded into an exported ONNX graph (`inference.training.export.add_flip_tta`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.model import EmotionModel

from .conftest import FER2013_LABELS

onnx = pytest.importorskip("onnx")

from inference.training.export import add_flip_tta  # noqa: E402  (needs onnx)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _mirror_sensitive_model(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """softmax(flatten(x) @ W + b) with random W (so a face and its mirror score differently), two outputs."""
    helper, tp = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (48 * 48, 7)).astype(np.float32)
    b = rng.normal(0, 0.5, 7).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
            helper.make_node("Neg", ["scores"], ["neg"]),
            helper.make_node("Softmax", ["neg"], ["other_probabilities"], axis=1),
        ],
        "mirror_sensitive",
        [helper.make_tensor_value_info("input", tp.FLOAT, ["N", 1, 48, 48])],
        [
            helper.make_tensor_value_info("probabilities", tp.FLOAT, ["N", 7]),
            helper.make_tensor_value_info("other_probabilities", tp.FLOAT, ["N", 7]),
        ],
        initializer=[
            helper.make_tensor("shape", tp.INT64, [2], [-1, 48 * 48]),
            helper.make_tensor("w", tp.FLOAT, list(w.shape), w.ravel()),
            helper.make_tensor("b", tp.FLOAT, [7], b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "labels": json.dumps(FER2013_LABELS),
            "input_size": "48",
            "input_channels": "1",
            "normalization": json.dumps({"scale": 1 / 255, "mean": 0.5, "std": 0.25}),
            "output": "probabilities",
            "version": "mirror-test-1",
            "metrics": "{}",
            "trained_on": "nothing",
            "extra_outputs": json.dumps({"other_probabilities": FER2013_LABELS}),
        },
    )
    onnx.save(model, str(path))
    return path, w, b


def _crops(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 48, 48), dtype=np.uint8)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_flip_graph_averages_each_face_with_its_mirror(tmp_path: Path, average: str) -> None:
    src, w, b = _mirror_sensitive_model(tmp_path / "m.onnx")
    out = add_flip_tta(src, tmp_path / "flip.onnx", average=average)
    model = EmotionModel(out, max_batch=4)  # several session calls for 6 crops
    crops = _crops()
    x = model.preprocess(crops).reshape(len(crops), -1)
    xm = model.preprocess(crops[:, :, ::-1]).reshape(len(crops), -1)
    z, zm = x @ w + b, xm @ w + b
    expected = _softmax((z + zm) / 2) if average == "logits" else (_softmax(z) + _softmax(zm)) / 2
    assert not np.allclose(_softmax(z), _softmax(zm), atol=1e-3)  # the model does see the mirror
    batch = model.predict(crops)
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-6)
    singles = np.concatenate([model.predict(crop[None]) for crop in crops])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    # the second output is averaged too and keeps its name and shape
    other = model.session.run(["other_probabilities"], {"input": model.preprocess(crops)})[0]
    assert other.shape == (len(crops), 7)
    np.testing.assert_allclose(other.sum(axis=1), 1.0, atol=1e-6)


def test_flip_graph_keeps_metadata_and_refuses_a_second_fold(tmp_path: Path) -> None:
    src, _, _ = _mirror_sensitive_model(tmp_path / "m.onnx")
    out = add_flip_tta(src, tmp_path / "flip.onnx")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta == {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["probabilities", "other_probabilities"]
    with pytest.raises(ValueError, match="already"):
        add_flip_tta(out, tmp_path / "flip2.onnx")


def test_shipped_model_with_flip_averaging_is_mirror_invariant(real_model_path: Path, tmp_path: Path) -> None:
    out = add_flip_tta(real_model_path, tmp_path / "flip.onnx")
    model = EmotionModel(out, max_batch=3)
    crops = _crops(5)
    batch = model.predict(crops)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch, model.predict(np.ascontiguousarray(crops[:, :, ::-1])), atol=1e-5)
    singles = np.concatenate([model.predict(crop[None]) for crop in crops])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    # every output the metadata describes (e.g. the FER+ head) is averaged too and keeps its labels' width
    for name, spec in model.metadata.outputs.items():
        head = EmotionModel(out, output=name)
        raw = head.session.run([name], {head.input_name: head.preprocess(crops)})[0]
        assert raw.shape == (5, len(spec.labels)) == (5, len(head.labels))
        np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-5)
        mirrored = head.predict(np.ascontiguousarray(crops[:, :, ::-1]))
        np.testing.assert_allclose(head.predict(crops), mirrored, atol=1e-5)


def test_finalize_add_flip_tta_restamps_version_flag_and_metrics(
    tmp_path: Path, fer2013: dict, shared_subset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m inference.training.finalize --add-flip-tta`: new version and flag, metrics re-measured (over
    the shared subset's real faces: the metadata's shape is checked here, not the figures)."""
    from inference.training.finalize import add_flip_tta_cli

    monkeypatch.setenv("PORTAL_SHARED_DIR", str(shared_subset))

    src, _, _ = _mirror_sensitive_model(tmp_path / "m.onnx")
    out = tmp_path / "out" / "flip.onnx"
    report = add_flip_tta_cli(str(src), str(out), "logits", None, str(shared_subset / "data"), speed=False)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    before = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    assert meta["version"] == "mirror-test-1-flip" == report["version"]
    assert json.loads(meta["flip_tta"]) == {"average": "logits"}
    metrics = json.loads(meta["metrics"])
    assert metrics["split"] == "PrivateTest" and metrics["fer2013_accuracy"] == pytest.approx(
        report["fer2013"]["accuracy"], abs=1e-4
    )
    assert "publictest_fer2013_accuracy" in metrics
    unchanged = set(before) - {"version", "metrics"}
    assert {k: meta[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert list(meta)[: len(before)] == list(before)  # same keys, same order, flag appended
