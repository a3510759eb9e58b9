"""ONNX export with the portal's metadata contract (docs/architecture.md, "Inference contract")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from . import FER_LABELS, FERPLUS_LABELS
from .model import EmotionNet, ExportWrapper


def export_onnx(net: EmotionNet, path: str | Path, *, flip_tta: bool, t_fer: float, t_ferplus: float) -> Path:
    """Write the inference graph: input `input` [N,1,48,48] -> `probabilities` [N,7] (+FER+)."""
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


def contract_metadata(
    normalization: dict[str, float], version: str, metrics: dict[str, Any], trained_on: str
) -> dict[str, Any]:
    return {
        "labels": list(FER_LABELS),
        "input_size": "48",
        "input_channels": "1",
        "normalization": normalization,
        "output": "probabilities",
        "version": version,
        "metrics": metrics,
        "trained_on": trained_on,
        # extra (not part of the loader contract): the FER+ head, 8 classes incl. contempt
        "extra_outputs": {"ferplus_probabilities": list(FERPLUS_LABELS)},
        "smile_score": "probabilities[happy]",
        "valence_weights": VALENCE_WEIGHTS,
    }


# valence = sum_k p_k * w_k over the FER2013 output; happy positive, surprise mildly positive
# (ambiguous), neutral 0, negative emotions negative. A convention, documented in the card.
VALENCE_WEIGHTS: dict[str, float] = {
    "angry": -0.8,
    "disgust": -0.9,
    "fear": -0.7,
    "happy": 1.0,
    "sad": -0.8,
    "surprise": 0.2,
    "neutral": 0.0,
}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, batch: int = 32) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on normalised face crops.

    Why: onnxruntime's QLinearConv on x86 (VNNI) runs these convs ~3x faster than fp32 and the
    file is ~4x smaller, which buys a wider student within the one-core speed budget. The
    graph's input/outputs stay float32, so the loader contract is unchanged.
    """
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
