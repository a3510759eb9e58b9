# ruff: noqa: E501  (Markdown template lines)
"""Model card (Markdown) written from measured metrics and the training config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import FER_LABELS
from .export import VALENCE_WEIGHTS


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def write_card(
    path: str | Path,
    *,
    version: str,
    cfg: dict[str, Any],
    config_path: str,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    command: str,
    hardware: str,
    notes: str = "",
) -> Path:
    fer = metrics["fer2013"]
    pub = metrics.get("public", {}).get("fer2013", {})
    fp = metrics.get("ferplus", {})
    rec = "\n".join(f"| {k} | {_pct(v)} |" for k, v in fer["per_class_recall"].items())
    speed = metrics.get("cpu_crops_per_s_b32_1thread")
    model = cfg["model"]
    quant_line = ""
    if cfg["export"].get("quantize") == "int8":
        quant_line = (
            "- Weights and activations int8 (onnxruntime static quantization, QDQ, per-channel weights, "
            f"MinMax calibration on {cfg['export'].get('calib_rows', 1024)} seeded Training crops); input "
            "and outputs stay float32. All metrics below are of the int8 file.\n"
        )
    if "members" in summary:
        quant_line += (
            f"- Ensemble of {len(summary['members'])} members whose probabilities are averaged inside the "
            f"graph; member overrides of the base config: {json.dumps(cfg.get('members'))}; member "
            "PublicTest accuracies (fp32, before merging): "
            + ", ".join(f"{m['public_fer_acc']:.4f}" for m in summary["members"])
            + ".\n"
        )
    teacher = cfg.get("teacher")
    if teacher:
        quant_line += (
            f"- Distilled from a teacher CNN (widths {teacher['model']['widths']}, depths "
            f"{teacher['model']['depths']}, {teacher.get('train', {}).get('epochs', '?')} epochs, same data "
            f"and protocol; PublicTest accuracy {summary.get('teacher', {}).get('public_fer_acc', float('nan')):.4f}) "
            f"trained first in the same run: loss = {1 - cfg['train'].get('kd_weight', 0):.2f} x (labels) + "
            f"{cfg['train'].get('kd_weight', 0):.2f} x T^2 x CE(teacher softmax at T={cfg['train'].get('kd_temperature', 2.0)}) "
            "on the same augmented batch.\n"
        )
    text = f"""# Emotion classifier `{version}`

File: `inference/models/emotion.onnx` ({metrics["size_bytes"] / 1e6:.2f} MB). Loaded by `inference/model.py`
through its ONNX metadata (see docs/architecture.md, "Inference contract").

## What it does
Input `input` float32 `[N, 1, 48, 48]` (grey face crop, dynamic N), normalised as
`(x * scale - mean) / std` with the values in metadata `normalization`.
Output `probabilities` `[N, 7]` softmax in FER2013 order: {", ".join(FER_LABELS)}.
Extra output `ferplus_probabilities` `[N, 8]` (neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt) from a second head trained on FER+ vote distributions; the product's default is `probabilities`.

Derived scores (conventions of this card, computed by the consumer):
- **smile score** = `probabilities[happy]`.
- **valence** = `sum_k p_k * w_k` with w = {json.dumps(VALENCE_WEIGHTS)} (range [-0.9, 1]).
  Also stored in metadata `valence_weights`.

## Data and protocol
- FER2013 (`fer2013.npz`, 35,887 48x48 grey faces, research use) with the FER+ relabelling
  (`ferplus_votes.npz`, 10 annotators per image, MIT).
- Trained on `Training` (28,709 rows minus those whose FER+ majority is unknown/not-a-face), model
  and epoch selected on `PublicTest` (EMA weights, best PublicTest FER2013 accuracy; temperature for
  calibration fitted on PublicTest), reported once on `PrivateTest`. PrivateTest was never used for tuning.
- Architecture: plain VGG-style CNN, widths {model["widths"]}, depths {model["depths"]}, stem stride
  {model.get("stem_stride", 1)}, global average pooling, two linear heads; {summary["params"] / 1e6:.2f}M parameters;
  BatchNorm folded into the convolutions at export; horizontal-flip averaging in the graph:
  {cfg["export"].get("flip_tta", False)}.
{quant_line}- Training: {cfg["train"]["epochs"]} epochs (ran {summary["epochs_run"]}, selected epoch {summary["epoch"]}),
  {cfg["train"].get("optimizer", "sgd")} lr {cfg["train"]["lr"]}, batch {cfg["train"]["batch_size"]}, cosine schedule,
  label smoothing {cfg["train"].get("label_smoothing", 0.1)}, mixup p {cfg["train"].get("mixup_p", 0)},
  augmentation on the device (flip, rotation, scale, shift, brightness/contrast, erasing), loss =
  CE(FER2013 labels) + {cfg["train"].get("ferplus_weight", 1.0)} x CE(FER+ vote distribution), seed {cfg["seed"]}.
  Training took {summary["train_seconds"]:.0f} s.

## Reproduce
```
{command}
```
Config: `{config_path}`. Hardware of the shipped run: {hardware}.
{notes}
Re-measure the shipped file without torch: `python -m inference.training.evaluate inference/models/emotion.onnx`.

## Metrics (FER2013 PrivateTest, n={fer["n"]}, measured from the ONNX file)
| metric | value |
|---|---|
| FER2013 accuracy (7 classes) | {_pct(fer["accuracy"])} |
| FER2013 macro-F1 | {fer["macro_f1"]:.4f} |
| FER+ majority-vote accuracy (8 classes, unknown/NF dropped, n={fp.get("n", 0)}) | {_pct(fp["accuracy"]) if fp else "n/a"} |
| happy-vs-rest accuracy (argmax) | {_pct(fer["happy_vs_rest_accuracy"])} |
| happy-vs-rest ROC AUC (p_happy) | {fer["happy_vs_rest_auc"]:.4f} |
| ECE (15 bins, top-1) | {fer["ece"]:.4f} |
| NLL | {fer["nll"]:.4f} |
| PublicTest accuracy (selection split) | {_pct(pub["accuracy"]) if pub else "n/a"} |
| size | {metrics["size_bytes"]:,} bytes |
| CPU speed, batch 32, onnxruntime, 1 thread | {f"{speed:.0f} crops/s" if speed else "n/a"} ({metrics.get("speed_hardware", "n/a")}) |

Per-class recall (PrivateTest):

| class | recall |
|---|---|
{rec}

## Limitations
- FER2013 is low-resolution, web-scraped, posed and spontaneous faces with noisy labels (human accuracy
  is roughly 65±5%); the classes disgust (few training images) and fear are the weakest.
- Webcam crops differ from FER2013 (lighting, pose, resolution, detector crop); accuracy on the portal's
  participants is unmeasured. Readings are estimates of displayed expressions, not of felt emotions.
- Demographic balance of FER2013 is undocumented; performance across groups is unmeasured.
- Probabilities were temperature-calibrated on PublicTest; calibration on webcam data is unknown.
- The int8 speed relies on onnxruntime's integer kernels (AVX-512 VNNI / AMX on the measuring CPU);
  on CPUs without VNNI the same file runs markedly slower (re-measure with `evaluate`).
- Single run, single seed: differences of a few tenths of a percent between runs are noise
  (PrivateTest n=3589 gives a 95% interval of about ±1.5 points on accuracy).
"""
    p = Path(path)
    p.write_text(text)
    return p
