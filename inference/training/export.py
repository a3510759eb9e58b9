"""ONNX export with the portal's metadata contract (docs/architecture.md, "Inference contract").

torch is imported only by `export_onnx`: metadata, quantization and graph surgery (`add_flip_tta`) run
on an exported file with onnx + onnxruntime alone (`python -m inference.training.finalize` needs no torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from . import HEAD_OUTPUTS

if TYPE_CHECKING:
    from .model import EmotionNet


def export_onnx(net: EmotionNet, path: str | Path, *, flip_tta: bool, t_fer: float, t_ferplus: float) -> Path:
    """Write the inference graph: input `input` [N,1,48,48] -> `probabilities` [N,7] (+FER+)."""
    import torch  # training-only dependency (the `train` extra): the CPU-side tools import this module

    from .model import ExportWrapper  # imports torch

    wrapper = ExportWrapper(net.cpu().float().eval(), flip_tta, t_fer, t_ferplus).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        # TorchScript exporter: no onnxscript dependency, stable op set for onnxruntime
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 1, 48, 48),),
            str(path),
            input_names=["input"],
            output_names=["probabilities", "ferplus_probabilities"],
            dynamic_axes={"input": {0: "N"}, "probabilities": {0: "N"}, "ferplus_probabilities": {0: "N"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def set_metadata(path: str | Path, meta: dict[str, Any]) -> None:
    """Replace metadata_props; non-string values are stored as JSON."""
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key = k
        p.value = v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


FLIP_PREFIX = "flip_tta/"


def add_flip_tta(src: str | Path, out: str | Path, *, average: str = "logits") -> Path:
    """Fold horizontal-flip test-time averaging into an exported graph (no torch, no retraining).

    input `x` [N,C,H,W] -> Concat(x, x mirrored along W) on the batch axis -> the original graph on 2N
    rows -> each output's two halves averaged -> the same output names and shapes [N,K].
    `average="logits"`: the input of each output's final Softmax is averaged (the function of
    `ExportWrapper(flip_tta=True)`, whose heads are linear in the pooled feature; rows sum to 1 exactly);
    `"probabilities"`: the outputs themselves. The two halves run in one call, so per-row results do not
    depend on the batch. metadata_props are copied unchanged (the caller restamps version and metrics,
    see `pipeline.restamp`); the graph costs twice the convolutions of the original.
    """
    if average not in ("logits", "probabilities"):
        raise ValueError(f"average must be 'logits' or 'probabilities', not {average!r}")
    m = onnx.load(str(src))
    g = m.graph
    if any(p.key == "flip_tta" for p in m.metadata_props) or any(
        n.name.startswith(FLIP_PREFIX) for n in g.node
    ):
        raise ValueError(f"{src} already averages over flips")
    if len(g.input) != 1:
        raise ValueError(f"expected one graph input, got {[i.name for i in g.input]}")
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    x, pre = g.input[0].name, FLIP_PREFIX
    pair = pre + "input_pair"
    for n in g.node:
        n.input[:] = [pair if name == x else name for name in n.input]
    i64 = onnx.TensorProto.INT64
    g.initializer.extend(
        [
            helper.make_tensor(pre + "starts", i64, [1], [-1]),
            helper.make_tensor(pre + "ends", i64, [1], [-(2**63)]),  # INT64_MIN: through index 0
            helper.make_tensor(pre + "axes", i64, [1], [3]),  # W of [N, C, H, W]
            helper.make_tensor(pre + "steps", i64, [1], [-1]),
        ]
    )
    head = [
        helper.make_node(
            "Slice",
            [x, pre + "starts", pre + "ends", pre + "axes", pre + "steps"],
            [pre + "input_mirrored"],
            name=pre + "mirror",
        ),
        helper.make_node("Concat", [x, pre + "input_mirrored"], [pair], axis=0, name=pre + "concat"),
    ]

    def mean_of_halves(tensor: str, k: int, tag: str) -> tuple[list[onnx.NodeProto], str]:
        """[2N, k] -> [2, N, k] -> mean over the first axis: row i averaged with its mirror (row N+i)."""
        shape, mean = f"{pre}{tag}_pairs_shape", f"{pre}{tag}_mean"
        g.initializer.append(helper.make_tensor(shape, i64, [3], [2, -1, k]))
        reshape = helper.make_node(
            "Reshape", [tensor, shape], [f"{pre}{tag}_pairs"], name=f"{pre}{tag}_pairs"
        )
        if opset >= 18:
            axes = f"{pre}{tag}_axes"
            g.initializer.append(helper.make_tensor(axes, i64, [1], [0]))
            reduce = helper.make_node(
                "ReduceMean", [f"{pre}{tag}_pairs", axes], [mean], keepdims=0, name=mean
            )
        else:
            reduce = helper.make_node(
                "ReduceMean", [f"{pre}{tag}_pairs"], [mean], axes=[0], keepdims=0, name=mean
            )
        return [reshape, reduce], mean

    producer = {o: n for n in g.node for o in n.output}
    before: dict[int, list[onnx.NodeProto]] = {}  # new nodes to place before node id(...)
    tail: list[onnx.NodeProto] = []
    for output in g.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            raise ValueError(f"output {output.name} must be [N, K] with a fixed K")
        k, node = dims[1].dim_value, producer[output.name]
        if average == "logits":
            if node.op_type != "Softmax":
                raise ValueError(f"output {output.name} is not a Softmax; use average='probabilities'")
            nodes, mean = mean_of_halves(node.input[0], k, output.name)
            node.input[0] = mean
            before.setdefault(id(node), []).extend(nodes)
        else:
            node.output[:] = [f"{pre}{output.name}_both" if o == output.name else o for o in node.output]
            nodes, mean = mean_of_halves(f"{pre}{output.name}_both", k, output.name)
            nodes[-1].output[0] = output.name
            tail.extend(nodes)
    body = [new for n in g.node for new in (*before.get(id(n), []), n)]
    del g.node[:]
    g.node.extend(head + body + tail)
    del g.value_info[:]  # intermediate shapes were recorded for N rows; the trunk now sees 2N
    onnx.checker.check_model(m)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))
    return out


def contract_metadata(
    normalization: dict[str, float],
    version: str,
    metrics: dict[str, Any],
    trained_on: str,
    default_output: str = "probabilities",
) -> dict[str, Any]:
    """The metadata contract (docs/architecture.md): the default output's labels and valence weights as
    `labels`/`valence_weights`, the other head in `extra_outputs` with its own."""
    others = {
        name: {"labels": list(labels), "valence_weights": valence_weights(labels)}
        for name, labels in HEAD_OUTPUTS.items()
        if name != default_output
    }
    labels = HEAD_OUTPUTS[default_output]
    return {
        "labels": list(labels),
        "input_size": "48",
        "input_channels": "1",
        "normalization": normalization,
        "output": default_output,
        "version": version,
        "metrics": metrics,
        "trained_on": trained_on,
        "extra_outputs": others,
        "smile_score": "p(happy) of the output read",
        "valence_weights": valence_weights(labels),
    }


# valence = sum_k p_k * w_k; happy positive, surprise mildly positive (ambiguous), neutral 0, negative
# emotions negative; contempt (FER+ only) between sadness and neutral, as a mild negative display. A
# convention, documented in the card.
VALENCE_WEIGHTS: dict[str, float] = {
    "angry": -0.8,
    "disgust": -0.9,
    "fear": -0.7,
    "happy": 1.0,
    "sad": -0.8,
    "surprise": 0.2,
    "neutral": 0.0,
    "contempt": -0.6,
}


def valence_weights(labels: tuple[str, ...]) -> dict[str, float]:
    """The valence weights of one head's labels, in its order."""
    return {label: VALENCE_WEIGHTS[label] for label in labels}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, batch: int = 32) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on normalised face crops.

    Why: onnxruntime's QLinearConv on x86 (VNNI) runs these convs ~3x faster than fp32 and the
    file is ~4x smaller, which buys a wider student within the one-core speed budget. The
    graph's input/outputs stay float32, so the loader contract is unchanged.
    """
    # onnxruntime.quantization takes about 1.1 s to import; only quantizing needs it
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(calib):
                return None
            b = calib[self.i : self.i + batch]
            self.i += batch
            return {"input": b}

    # only the conv trunk is quantized: the heads (Gemm), temperature (Div) and Softmax stay
    # float so the output rows sum to 1 exactly and logits keep full resolution
    m = onnx.load(str(fp32_path))
    keep_float = [n.name for n in m.graph.node if n.op_type in ("Gemm", "Div", "Softmax", "Add", "Mul")]
    quantize_static(
        str(fp32_path),
        str(out_path),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        nodes_to_exclude=keep_float,
    )
    return Path(out_path)


def calibration_batch(
    images: np.ndarray, train_rows: np.ndarray, cfg: dict[str, Any], normalization: dict[str, float]
) -> np.ndarray:
    """Fixed, seeded subset of Training crops (never test data), normalised like the input."""
    rng = np.random.default_rng(int(cfg["seed"]))
    rows = rng.choice(train_rows, int(cfg["export"].get("calib_rows", 1024)), replace=False)
    x = images[rows].astype(np.float32)[:, None] * normalization["scale"]
    return ((x - normalization["mean"]) / normalization["std"]).astype(np.float32)
