"""Evaluate a shipped emotion ONNX model from the file alone (onnxruntime + numpy, no torch).

`evaluate_model(onnx_path, data_dir)` returns a JSON-able dict; the CLI owner can expose it as
`python -m inference evaluate --json`. Everything the preprocessing needs comes from the model's
metadata_props (docs/architecture.md, "Inference contract").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inference import EMOTIONS
from inference.model import EmotionModel

from .data import PRIVATE, FerData, ferplus_majority, load_data

HAPPY = 3  # FER2013 label index of "happy"


def _session(onnx_path: str | os.PathLike[str], threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def read_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, str]:
    return dict(_session(onnx_path).get_modelmeta().custom_metadata_map)


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp = np.diag(cm)
    prec = tp / np.maximum(cm.sum(0), 1)
    rec = tp / np.maximum(cm.sum(1), 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return float(f1.mean())


def per_class_recall(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    return np.diag(cm) / np.maximum(cm.sum(1), 1)


def roc_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) ROC AUC with average ranks for ties."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), np.float64)
    # average ranks over tied groups
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    pos = y_bin.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence (equal-width bins)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


def fer_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    k = probs.shape[1]
    pred = probs.argmax(1)
    happy_true = y == HAPPY
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred, k),
        "per_class_recall": {
            lab: float(r) for lab, r in zip(labels, per_class_recall(y, pred, k), strict=True)
        },
        "happy_vs_rest_accuracy": float(((pred == HAPPY) == happy_true).mean()),
        "happy_vs_rest_auc": roc_auc(happy_true, probs[:, HAPPY]),
        "ece": ece(probs, y),
        "nll": float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()),
        "n": int(len(y)),
    }


def ferplus_metrics(probs8: np.ndarray, votes: np.ndarray) -> dict[str, Any]:
    """Majority-vote accuracy over 8 classes; rows whose majority is unknown/NF are dropped."""
    maj = ferplus_majority(votes)
    keep = maj >= 0
    pred = probs8[keep].argmax(1)
    return {"accuracy": float((pred == maj[keep]).mean()), "n": int(keep.sum())}


def cpu_throughput(
    onnx_path: str | os.PathLike[str], batch: int = 32, threads: int = 1, seconds: float = 3.0
) -> float:
    """Face crops per second at a given batch on `threads` CPU threads (median of repeats)."""
    model = EmotionModel(onnx_path, intra_op_threads=threads)
    shape = (batch, model.input_channels, model.input_size, model.input_size)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    feed = {model.input_name: x}
    for _ in range(5):
        model.session.run(None, feed)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t = time.perf_counter()
        model.session.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(batch / np.median(times))


def model_crops(images: np.ndarray, model: EmotionModel) -> np.ndarray:
    """FER2013's 48x48 grey faces as the model's crops: resized to its input size, grey or BGR."""
    size = model.input_size
    crops = images
    if images.shape[1:] != (size, size):
        crops = np.stack(
            [cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) for image in images]
        )
    return np.repeat(crops[..., None], 3, axis=3) if model.input_channels == 3 else crops


def evaluate_model(
    onnx_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: int = PRIVATE,
    speed: bool = True,
    data: FerData | None = None,
) -> dict[str, Any]:
    """All product-facing metrics of an emotion ONNX file on a FER2013 split (default PrivateTest).

    FER2013 figures go through the product's loader, so the model's own label order, input size,
    channels and normalisation are honoured exactly as in production.
    """
    model = EmotionModel(onnx_path, intra_op_threads=os.cpu_count() or 1, max_batch=512)
    d = data if data is not None else load_data(data_dir)
    rows = d.split(split)
    crops = model_crops(d.images[rows], model)
    res: dict[str, Any] = {
        "model": str(onnx_path),
        "version": model.version,
        "split": ("Training", "PublicTest", "PrivateTest")[split],
        # EMOTIONS is FER2013's label order, so the loader's columns line up with the dataset's labels.
        "fer2013": fer_metrics(model.predict(crops), d.labels[rows], list(EMOTIONS)),
        "size_bytes": Path(onnx_path).stat().st_size,
    }
    if "ferplus_probabilities" in {output.name for output in model.session.get_outputs()}:
        inputs = model.preprocess(crops)
        probs8 = np.concatenate(
            [
                model.session.run(["ferplus_probabilities"], {model.input_name: inputs[i : i + 512]})[0]
                for i in range(0, len(inputs), 512)
            ]
        )
        res["ferplus"] = ferplus_metrics(probs8, d.votes[rows])
    if speed:
        res["cpu_crops_per_s_b32_1thread"] = cpu_throughput(onnx_path, 32, 1)
    return res


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate an emotion ONNX model (no torch needed).")
    ap.add_argument(
        "model", nargs="?", default=str(Path(__file__).resolve().parents[1] / "models" / "emotion.onnx")
    )
    ap.add_argument("--data", default=None, help="data dir or packed npz (default: shared data)")
    ap.add_argument("--no-speed", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps(evaluate_model(a.model, a.data, speed=not a.no_speed), indent=2))


if __name__ == "__main__":
    main()
