"""Small synthetic ONNX emotion models that honour the metadata contract (docs/architecture.md, "Inference
contract"), for tests of the loader, the pipeline, the CLI and the product's handling of label sets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

# FER2013's seven classes in the dataset's own label order (fer2013.npz `labels` index into this). Models
# are free to use any label set in any order: tests look labels up by name in `model.labels`.
FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
# FER+'s eight classes (vote columns) under FER2013's names.
FERPLUS_LABELS = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]


@dataclass(frozen=True)
class Head:
    """A second output of a contract model: softmax(mean(normalised input) * weights + biases)."""

    name: str
    labels: list[str]
    weights: list[float]
    biases: list[float]


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
    second: Head | None = None,
) -> Path:
    """A tiny ONNX model honouring the metadata contract: softmax(mean(normalised input) * w + b).

    Its output depends on brightness only, which makes label re-ordering and batching easy to check.
    `second`: a second output tensor (a head of its own, same recipe), described in the metadata's
    `extra_outputs` as {name: labels}; pass `extra_props={"extra_outputs": ...}` to describe it otherwise
    (e.g. with valence weights, or not at all).
    """
    onnx = pytest.importorskip("onnx")
    helper, tensor_proto = onnx.helper, onnx.TensorProto
    count = len(labels)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "biases"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["softmax"], axis=1),
        # output_scale != 1 imitates a quantised model whose probabilities do not quite sum to 1
        helper.make_node("Mul", ["softmax", "output_scale"], [output_name]),
    ]
    outputs = [helper.make_tensor_value_info(output_name, tensor_proto.FLOAT, ["N", count])]
    initializers = [
        helper.make_tensor("shape", tensor_proto.INT64, [2], [-1, 1]),
        helper.make_tensor("weights", tensor_proto.FLOAT, [1, count], weights),
        helper.make_tensor("biases", tensor_proto.FLOAT, [count], biases),
        helper.make_tensor("output_scale", tensor_proto.FLOAT, [], [output_scale]),
    ]
    props = {}
    if second is not None:
        width = len(second.labels)
        nodes += [
            helper.make_node("MatMul", ["flat", "second_weights"], ["second_scaled"]),
            helper.make_node("Add", ["second_scaled", "second_biases"], ["second_scores"]),
            helper.make_node("Softmax", ["second_scores"], [second.name], axis=1),
        ]
        outputs.append(helper.make_tensor_value_info(second.name, tensor_proto.FLOAT, ["N", width]))
        initializers += [
            helper.make_tensor("second_weights", tensor_proto.FLOAT, [1, width], second.weights),
            helper.make_tensor("second_biases", tensor_proto.FLOAT, [width], second.biases),
        ]
        props["extra_outputs"] = json.dumps({second.name: second.labels})
    graph = helper.make_graph(
        nodes,
        "contract_model",
        [helper.make_tensor_value_info("input", tensor_proto.FLOAT, ["N", channels, input_size, input_size])],
        outputs,
        initializer=initializers,
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
        | props
        | (extra_props or {}),
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
