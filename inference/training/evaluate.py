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

import numpy as np

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


def preprocess(images: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """uint8 [N,48,48] -> float32 [N,1,48,48] with the model's own normalization."""
    norm = json.loads(meta["normalization"])
    x = images.astype(np.float32)[:, None] * np.float32(norm["scale"])
    return (x - np.float32(norm["mean"])) / np.float32(norm["std"])


def predict(sess: Any, x: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """Run every output of the model over x in batches; returns name -> stacked array."""
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), batch):
        for n, y in zip(names, sess.run(names, {"input": x[i : i + batch]}), strict=True):
            parts[n].append(y)
    return {n: np.concatenate(v) for n, v in parts.items()}


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
    sess = _session(onnx_path, threads)
    x = np.random.default_rng(0).random((batch, 1, 48, 48), dtype=np.float32)
    for _ in range(5):
        sess.run(None, {"input": x})
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return float(batch / np.median(times))


def evaluate_model(
    onnx_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: int = PRIVATE,
    speed: bool = True,
    data: FerData | None = None,
) -> dict[str, Any]:
    """All product-facing metrics of an emotion ONNX file on a FER2013 split (default PrivateTest)."""
    sess = _session(onnx_path, threads=os.cpu_count() or 1)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    labels = json.loads(meta["labels"])
    d = data if data is not None else load_data(data_dir)
    rows = d.split(split)
    out = predict(sess, preprocess(d.images[rows], meta))
    res: dict[str, Any] = {
        "model": str(onnx_path),
        "version": meta.get("version"),
        "split": ("Training", "PublicTest", "PrivateTest")[split],
        "fer2013": fer_metrics(out[meta.get("output", "probabilities")], d.labels[rows], labels),
        "size_bytes": Path(onnx_path).stat().st_size,
    }
    if "ferplus_probabilities" in out:
        res["ferplus"] = ferplus_metrics(out["ferplus_probabilities"], d.votes[rows])
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
