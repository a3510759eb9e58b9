"""Evaluate a shipped emotion ONNX model from the file alone (onnxruntime + numpy, no torch).

`evaluate_model(onnx_path, data_dir)` returns a JSON-able dict; the CLI owner can expose it as
`python -m inference evaluate --json`. Everything the preprocessing needs comes from the model's
metadata_props (docs/architecture.md, "Inference contract").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from inference.model import EmotionModel

from . import FER_LABELS, FERPLUS_LABELS
from .data import PRIVATE, FerData, ferplus_majority, load_data


def _session(onnx_path: str | os.PathLike[str], threads: int = 1) -> Any:
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


def restrict(probs: np.ndarray, labels: tuple[str, ...], classes: tuple[str, ...]) -> np.ndarray:
    """An output's probabilities as columns of a dataset's `classes` (matched by name; a class the output
    lacks is a zero column, an output label the dataset lacks, e.g. contempt for FER2013, is dropped), rows
    renormalised to sum 1."""
    columns = np.zeros((len(probs), len(classes)), np.float64)
    for index, name in enumerate(classes):
        if name in labels:
            columns[:, index] = probs[:, labels.index(name)]
    totals = columns.sum(1, keepdims=True)
    return np.divide(columns, totals, out=np.full_like(columns, 1 / len(classes)), where=totals > 0)


def classification_metrics(
    probs: np.ndarray, y: np.ndarray, classes: tuple[str, ...], labels: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, macro-F1, recall per class, happy-vs-rest, calibration and the confusion matrix of an
    output (`labels`, probabilities `probs` [N, len(labels)]) against true classes `y` (indices into
    `classes`). The prediction is the argmax over the dataset's classes; happy-vs-rest uses the argmax over
    all the output's labels (the product's dominant label) and p(happy)."""
    k = len(classes)
    p = restrict(probs, labels, classes)
    pred = p.argmax(1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    missing = [name for name in classes if name not in labels]
    out: dict[str, Any] = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred, k),
        "per_class_recall": {
            name: float(r) for name, r in zip(classes, per_class_recall(y, pred, k), strict=True)
        },
        "confusion_labels": list(classes),
        "confusion_matrix": cm.tolist(),
        "n": int(len(y)),
    }
    if missing:
        out["classes_not_in_output"] = missing
    else:
        out["ece"] = ece(p, y)
        out["nll"] = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
    if "happy" in labels and "happy" in classes:
        happy_true = y == classes.index("happy")
        dominant_happy = probs.argmax(1) == labels.index("happy")
        out["happy_vs_rest_accuracy"] = float((dominant_happy == happy_true).mean())
        out["happy_vs_rest_auc"] = roc_auc(happy_true, probs[:, labels.index("happy")])
    return out


def fer_metrics(probs: np.ndarray, y: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    """Against FER2013's original labels (7 classes)."""
    return classification_metrics(probs, y, FER_LABELS, labels)


def ferplus_metrics(probs: np.ndarray, votes: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    """Against the FER+ majority vote over 8 classes; rows whose majority is unknown/NF are dropped."""
    maj = ferplus_majority(votes)
    keep = maj >= 0
    return classification_metrics(probs[keep], maj[keep], FERPLUS_LABELS, labels)


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
    output: str | None = None,
) -> dict[str, Any]:
    """All product-facing metrics of one output of an emotion ONNX file (default: the one its metadata
    names) on a FER2013 split (default PrivateTest), against FER2013's labels and against FER+'s majority
    votes. Every output is measured the same way, so two heads of one file compare side by side.

    Crops go through the product's loader, so the model's own labels, input size, channels and
    normalisation are honoured exactly as in production.
    """
    model = EmotionModel(onnx_path, intra_op_threads=os.cpu_count() or 1, max_batch=512, output=output)
    d = data if data is not None else load_data(data_dir)
    rows = d.split(split)
    probs = model.predict(model_crops(d.images[rows], model))
    res: dict[str, Any] = {
        "model": str(onnx_path),
        "version": model.version,
        "output": model.output_name,
        "labels": list(model.labels),
        "split": ("Training", "PublicTest", "PrivateTest")[split],
        "fer2013": fer_metrics(probs, d.labels[rows], model.labels),
        "ferplus": ferplus_metrics(probs, d.votes[rows], model.labels),
        "size_bytes": Path(onnx_path).stat().st_size,
    }
    if speed:
        res["cpu_crops_per_s_b32_1thread"] = cpu_throughput(onnx_path, 32, 1)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate an emotion ONNX model (no torch needed).")
    ap.add_argument(
        "model", nargs="?", default=str(Path(__file__).resolve().parents[1] / "models" / "emotion.onnx")
    )
    ap.add_argument("--data", default=None, help="data dir or packed npz (default: shared data)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--output", default=None, help="model output to evaluate (default: the metadata's)")
    a = ap.parse_args(argv)
    print(json.dumps(evaluate_model(a.model, a.data, speed=not a.no_speed, output=a.output), indent=2))


if __name__ == "__main__":
    main()
