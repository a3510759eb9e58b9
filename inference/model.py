"""The emotion classifier: an ONNX Runtime session plus what its metadata says about pre/post-processing.

Contract (docs/architecture.md, "Inference contract"): the model's `metadata_props` carry `labels` (JSON list,
output order), `input_size`, `input_channels`, `normalization` (JSON scale/mean/std), `output` (name of the
output tensor holding probabilities), `version`, `metrics`, `trained_on`. Nothing about the model is
hard-coded here, so a retrained model with another label order or input size drops in unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference import EMOTIONS

REQUIRED_METADATA = ("labels", "input_size", "input_channels", "normalization", "version")


class ModelContractError(ValueError):
    """The ONNX file does not carry the metadata the inference contract requires."""


@dataclass(frozen=True)
class ModelMetadata:
    labels: tuple[str, ...]
    input_size: int
    input_channels: int
    scale: float
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    version: str
    output: str = "probabilities"
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: str = ""
    # Only for input_channels 3: the channel order the model was trained on (crops arrive as OpenCV BGR).
    color_order: str = "RGB"
    # Optional: label -> weight; valence = sum_k p_k * w_k (documented in the model card).
    valence_weights: dict[str, float] | None = None

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        missing = [key for key in REQUIRED_METADATA if key not in props]
        if missing:
            raise ModelContractError(f"ONNX metadata_props lack {missing} (see docs/architecture.md)")
        try:
            normalization = json.loads(props["normalization"])
            metrics = json.loads(props["metrics"]) if props.get("metrics") else {}
            mean, std = normalization.get("mean", 0.0), normalization.get("std", 1.0)
            return cls(
                labels=tuple(json.loads(props["labels"])),
                input_size=int(props["input_size"]),
                input_channels=int(props["input_channels"]),
                scale=float(normalization.get("scale", 1.0)),
                mean=tuple(mean) if isinstance(mean, list) else float(mean),
                std=tuple(std) if isinstance(std, list) else float(std),
                version=str(props["version"]),
                output=props.get("output", "probabilities"),
                metrics=metrics if isinstance(metrics, dict) else {"value": metrics},
                trained_on=props.get("trained_on", ""),
                color_order=props.get("color_order", "RGB").upper(),
                valence_weights=json.loads(props["valence_weights"])
                if props.get("valence_weights")
                else None,
            )
        except (ValueError, TypeError, AttributeError) as error:
            raise ModelContractError(f"ONNX metadata_props are malformed: {error}") from error


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class EmotionModel:
    """One ONNX Runtime session; `predict` maps uint8 face crops to probabilities in `EMOTIONS` order.

    `InferenceSession.run` is thread-safe, so one instance serves every thread of a process.
    """

    def __init__(self, path: str | Path, intra_op_threads: int = 1, max_batch: int = 256) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"emotion model not found: {self.path}")
        options = ort.SessionOptions()
        # One thread by default: throughput comes from running several workers/frames in parallel, and
        # intra-op threads would fight those for cores (and ORT's spinning threads burn idle CPU).
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.metadata = ModelMetadata.from_props(dict(self.session.get_modelmeta().custom_metadata_map))
        self.max_batch = max_batch
        self.input_name = self.session.get_inputs()[0].name
        output_names = [output.name for output in self.session.get_outputs()]
        self.output_name = self.metadata.output if self.metadata.output in output_names else output_names[0]
        # Some exports emit raw scores; the tensor name tells (contract: "probabilities" = softmax inside).
        self.outputs_logits = "logit" in self.output_name.lower()
        missing = [label for label in EMOTIONS if label not in self.metadata.labels]
        if missing:
            raise ModelContractError(f"model labels {self.metadata.labels} lack {missing}")
        # Column order that turns the model's output into EMOTIONS order. Extra classes a model may have
        # (e.g. FER+'s contempt) are dropped and the rest renormalised.
        self._emotion_columns = np.array([self.metadata.labels.index(label) for label in EMOTIONS])
        weights = self.metadata.valence_weights
        self._valence_weights = (
            np.array([float(weights.get(label, 0.0)) for label in EMOTIONS], np.float32) if weights else None
        )
        # (x * scale - mean) / std  ==  x * gain + offset: one multiply-add over the batch.
        channels = self.metadata.input_channels
        mean = np.broadcast_to(np.asarray(self.metadata.mean, np.float32), (channels,))
        std = np.broadcast_to(np.asarray(self.metadata.std, np.float32), (channels,))
        self._gain = (np.float32(self.metadata.scale) / std).reshape(1, channels, 1, 1)
        self._offset = (-mean / std).reshape(1, channels, 1, 1)

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def input_channels(self) -> int:
        return self.metadata.input_channels

    def valence(self, probabilities: np.ndarray) -> np.ndarray | None:
        """Valence per row of EMOTIONS-ordered probabilities, or None if the model defines no weights."""
        if self._valence_weights is None:
            return None
        return probabilities @ self._valence_weights

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W] (grey) or [N, H, W, 3] (BGR) -> float32 [N, C, H, W], normalised per metadata."""
        crops = np.asarray(crops)
        size, channels = self.input_size, self.input_channels
        if crops.ndim == 3:
            crops = crops[:, None]
        elif crops.ndim == 4:
            if crops.shape[3] == 3 and self.metadata.color_order == "RGB":
                crops = crops[..., ::-1]
            crops = crops.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"expected crops [N, H, W] or [N, H, W, C], got shape {crops.shape}")
        if crops.shape[1:] != (channels, size, size):
            raise ValueError(f"crops must be {size}x{size} with {channels} channel(s), got {crops.shape}")
        return crops.astype(np.float32) * self._gain + self._offset

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N, len(EMOTIONS)] in `EMOTIONS` order for a batch of uint8 crops
        ([N, H, W] grey, or [N, H, W, 3] BGR for a colour model)."""
        if len(crops) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        inputs = self.preprocess(crops)
        parts = [
            self.session.run([self.output_name], {self.input_name: inputs[start : start + self.max_batch]})[0]
            for start in range(0, len(inputs), self.max_batch)
        ]
        raw = np.concatenate(parts).astype(np.float32, copy=False)
        probabilities = _softmax(raw) if self.outputs_logits else raw
        probabilities = probabilities[:, self._emotion_columns]
        # Always renormalise: extra classes (dropped above) and quantised models (an int8 softmax moves in
        # steps of 1/255, so its rows sum to 0.99..1.0) would otherwise break "probabilities sum to 1".
        totals = probabilities.sum(axis=1, keepdims=True)
        probabilities = np.divide(
            probabilities,
            totals,
            out=np.full_like(probabilities, 1.0 / len(EMOTIONS)),  # a row of zeros reads as "no idea"
            where=totals > 0,
        )
        return np.ascontiguousarray(probabilities, dtype=np.float32)
