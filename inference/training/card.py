# ruff: noqa: E501  (Markdown template lines)
"""Model card (Markdown) written from measured metrics, the default-output decision and the training record.

Every number in the tables comes from `pipeline._measure_into` (the ONNX file itself, through the product's
loader and pipeline); the prose of how the weights were trained comes from the run's config and summary
(`training_section`) or, for a file re-stamped without its run, from notes given to `finalize`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def training_section(cfg: dict[str, Any], summary: dict[str, Any]) -> str:
    """How the weights were trained, from a run's config and summary."""
    model, train = cfg["model"], cfg["train"]
    lines = [
        "- Trained on `Training` (28,709 rows minus those whose FER+ majority is unknown/not-a-face), epoch "
        f"selected on PublicTest{' + the real-face development crops' if train.get('real_faces') else ''} "
        f"(EMA weights, selection score {json.dumps(train.get('select', 'fer'))}); temperatures for "
        "calibration fitted on PublicTest; reported once on PrivateTest, which was never used for tuning.",
        f"- Architecture: plain VGG-style CNN, widths {model['widths']}, depths {model['depths']}, stem stride "
        f"{model.get('stem_stride', 1)}, global average pooling, two linear heads; {summary.get('params', 0) / 1e6:.2f}M "
        "parameters; BatchNorm folded into the convolutions at export.",
    ]
    if cfg["export"].get("quantize") == "int8":
        lines.append(
            "- Conv trunk int8 (onnxruntime static quantization, QDQ, per-channel weights, MinMax calibration on "
            f"{cfg['export'].get('calib_rows', 1024)} seeded Training crops); heads, temperatures and softmax "
            "float. All metrics below are of the int8 file."
        )
    init = cfg.get("init", {})
    if init:
        lines.append(f"- Fine-tuned from `{init.get('from_weights') or init.get('from_onnx')}`.")
    teacher = cfg.get("teacher")
    if teacher:
        lines.append(
            f"- Distilled from a teacher CNN (widths {teacher['model']['widths']}, PublicTest FER2013 "
            f"{_num(summary.get('teacher', {}).get('public_fer_acc'))}, FER+ "
            f"{_num(summary.get('teacher', {}).get('public_ferplus_acc'))}): loss = "
            f"{1 - train.get('kd_weight', 0):.2f} x (labels) + {train.get('kd_weight', 0):.2f} x T^2 x "
            f"CE(teacher softmax at T={train.get('kd_temperature', 2.0)}) on the same augmented batch."
        )
    augment = cfg.get("augment", {})
    webcam = [
        key[:-2]
        for key in ("gamma_p", "light_p", "jpeg_p", "rescale_p", "blur_p", "noise_p")
        if augment.get(key)
    ]
    lines.append(
        f"- {train['epochs']} epochs planned (ran {summary.get('epochs_run')}, selected epoch {summary.get('epoch')}), "
        f"{train.get('optimizer', 'sgd')} lr {train['lr']}, batch {train['batch_size']}, cosine schedule, label "
        f"smoothing {train.get('label_smoothing', 0.1)}, mixup p {train.get('mixup_p', 0)}; loss = "
        f"{train.get('fer_weight', 1.0)} x CE(FER2013 labels) + {train.get('ferplus_weight', 1.0)} x CE(FER+ vote "
        f"distribution); augmentation on the device: flip, rotation, scale, shift, brightness/contrast, erasing"
        + (f", webcam capture ({', '.join(webcam)}; see inference/training/augment.py)" if webcam else "")
        + f"; seed {cfg['seed']}; {summary.get('train_seconds', 0):.0f} s of training."
    )
    return "\n".join(lines)


def _outputs(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(output name, its metrics) for the default output first, then the others."""
    return [(metrics.get("output", "probabilities"), metrics), *metrics.get("other_outputs", {}).items()]


def _labels_line(name: str, m: dict[str, Any], default: bool) -> str:
    return f"- `{name}` `[N, {len(m['labels'])}]`{' (**default**)' if default else ''}: {', '.join(m['labels'])}."


def measurement_section(metrics: dict[str, Any]) -> str:
    """The tables: every output on FER2013 and FER+ (PrivateTest, PublicTest), on real photos and on the video."""
    outputs = _outputs(metrics)
    head = "| measure | " + " | ".join(f"`{name}`" for name, _ in outputs) + " |"
    rule = "|---|" + "---|" * len(outputs)

    def row(title: str, value) -> str:
        return f"| {title} | " + " | ".join(value(m) for _, m in outputs) + " |"

    private = [
        head,
        rule,
        row("FER2013 accuracy (7 classes)", lambda m: _pct(m["fer2013"]["accuracy"])),
        row("FER2013 macro-F1", lambda m: _num(m["fer2013"]["macro_f1"])),
        row("FER+ majority-vote accuracy (8 classes)", lambda m: _pct(m["ferplus"]["accuracy"])),
        row("FER+ macro-F1", lambda m: _num(m["ferplus"]["macro_f1"])),
        row(
            "happy-vs-rest accuracy, FER2013 labels",
            lambda m: _pct(m["fer2013"].get("happy_vs_rest_accuracy")),
        ),
        row(
            "happy-vs-rest accuracy, FER+ labels", lambda m: _pct(m["ferplus"].get("happy_vs_rest_accuracy"))
        ),
        row("happy-vs-rest ROC AUC, FER2013 labels", lambda m: _num(m["fer2013"].get("happy_vs_rest_auc"))),
        row(
            "ECE (FER2013 / FER+ labels)",
            lambda m: f"{_num(m['fer2013'].get('ece'))} / {_num(m['ferplus'].get('ece'))}",
        ),
        row("PublicTest FER2013 accuracy", lambda m: _pct(m["public"]["fer2013"]["accuracy"])),
        row("PublicTest FER+ accuracy", lambda m: _pct(m["public"]["ferplus"]["accuracy"])),
    ]
    classes = [label for label in metrics["ferplus"]["confusion_labels"]]
    recall = [head, rule] + [
        row(
            f"{label}: recall FER2013 / FER+",
            lambda m, label=label: (
                f"{_pct(m['fer2013']['per_class_recall'].get(label))} / {_pct(m['ferplus']['per_class_recall'].get(label))}"
            ),
        )
        for label in classes
    ]
    text = [
        f"### FER2013 PrivateTest (n={metrics['fer2013']['n']}; FER+ majority labels n={metrics['ferplus']['n']})",
        "",
        *private,
        "",
        "Recall per class (PrivateTest; `n/a`: the output has no such label):",
        "",
        *recall,
    ]
    text += ["", *real_faces_section(outputs)]
    return "\n".join(text)


def real_faces_section(outputs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Real photographs (realfaces_dev) and the real face video, per output, through the product's path."""
    lines: list[str] = []
    first = outputs[0][1].get("real_faces", {})
    photos = first.get("photos", {})
    if photos.get("classes"):
        lines += [
            f"### Real photographs (`realfaces_dev`, n={photos['n']}, face found in {_pct(photos['face_found_rate'])}; "
            "decode, detect, align, classify as the workers do)",
            "",
            "| output | true label | recall | confusion row (dominant label: photos) | mean p(neutral) | mean valence | mean smile |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in outputs:
            for label, entry in m["real_faces"]["photos"]["classes"].items():
                confusion = ", ".join(f"{k} {v}" for k, v in entry["confusion_row"].items() if v)
                lines.append(
                    f"| `{name}` | {label} (n={entry['face_found']}) | {_pct(entry['recall'])} | {confusion} | "
                    f"{_num(entry['mean_p_neutral'], 3)} | {_num(entry['mean_valence'], 3)} | {_num(entry['mean_smile'], 3)} |"
                )
    video = first.get("video", {})
    if video.get("frames"):
        lines += [
            "",
            f"### Real face video (`liveportrait_d3.mp4`, {video['frames']} frames at {video['fps']:.0f} fps, JPEG q80 "
            f"as capture.js sends them; face found in {_pct(video['face_found_rate'])}; no labels: relaxed for the "
            f"first {video['relaxed_seconds']:.0f} s, then a frown and a surprise)",
            "",
            "| output | part | frames | dominant labels (share) | mean valence | mean smile |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in outputs:
            for part in ("relaxed", "rest"):
                entry = m["real_faces"]["video"][part]
                shares = ", ".join(
                    f"{k} {100 * v:.0f}%"
                    for k, v in sorted(entry["dominant_share"].items(), key=lambda kv: -(kv[1] or 0))
                    if v
                )
                lines.append(
                    f"| `{name}` | {part} | {entry['frames']} | {shares} | {_num(entry['mean_valence'], 3)} | "
                    f"{_num(entry['mean_smile'], 3)} |"
                )
    return lines


def decision_section(decision: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{r['output']}` | {_pct(r['public_fer_acc'])} | {_pct(r['public_ferplus_acc'])} | "
        f"{_pct(r['real_recall'].get('neutral'))} | {_pct(r['real_recall'].get('happy'))} | {_num(r['score'])} |"
        for r in decision["rows"]
    )
    return f"""The product reads one output of this file (metadata `output`). It was chosen by
`pipeline.choose_default_output` on the selection data only, never on PrivateTest: {decision["rule"]}

| output | PublicTest FER2013 acc | PublicTest FER+ acc | realfaces_dev neutral recall | realfaces_dev happy recall | score |
|---|---|---|---|---|---|
{rows}

Chosen: **`{decision["chosen"]}`**."""


def write_card(
    path: str | Path,
    *,
    version: str,
    metrics: dict[str, Any],
    decision: dict[str, Any] | None,
    training_md: str,
    reproduce_md: str,
) -> Path:
    outputs = _outputs(metrics)
    default_name, default = outputs[0]
    weights = metrics.get("valence_weights") or {}
    speed = metrics.get("cpu_crops_per_s_b32_1thread")
    text = f"""# Emotion classifier `{version}`

File: `inference/models/emotion.onnx` ({metrics["size_bytes"] / 1e6:.2f} MB, {metrics["size_bytes"]:,} bytes). Loaded by
`inference/model.py` through its ONNX metadata (docs/architecture.md, "Inference contract"): readings carry the
labels of the output it names, in its order.

## What it does
Input `input` float32 `[N, 1, 48, 48]` (grey face crop, dynamic N), normalised as `(x * scale - mean) / std`
with the values in metadata `normalization`. Outputs (softmax probabilities):
{chr(10).join(_labels_line(name, m, name == default_name) for name, m in outputs)}

Derived scores (conventions of this card, computed by the product from the default output):
- **smile score** = p(happy).
- **valence** = `sum_k p_k * w_k` with w = {json.dumps(weights)} (metadata `valence_weights`; range
  [{min(weights.values(), default=0):.1f}, {max(weights.values(), default=0):.1f}]): happy positive, surprise mildly positive
  (ambiguous), neutral 0, the negative expressions negative, contempt (FER+ only) milder than sadness.

## The default output
{decision_section(decision) if decision else "Set by the training config (`export.default_output`)."}

## Data and training
- FER2013 (`fer2013.npz`, 35,887 48x48 grey faces, research use) with the FER+ relabelling
  (`ferplus_votes.npz`, 10 annotators per image, MIT); real-face development set `realfaces_dev` (1,600
  photographs, happy and neutral, Apache-2.0) for measuring and selecting only, never for training.
{training_md}

## Reproduce
{reproduce_md}
Re-measure the shipped file without torch: `python -m inference evaluate --json` (any output: `--output NAME`).

## Metrics (measured from the ONNX file)
{measurement_section(metrics)}

Speed: {f"{speed:.0f} face crops/s" if speed else "n/a"} at batch 32, onnxruntime, 1 thread ({metrics.get("speed_hardware", "n/a")}).

## Limitations
- FER2013 is low-resolution, web-scraped, posed and spontaneous faces with noisy labels; disgust, fear and
  contempt have few training images and are the weakest classes.
- `realfaces_dev` has two classes only and noisy crowd labels; it cannot show how angry, sad or surprised real
  faces read. Webcam participants differ again (lighting, pose, camera); readings are estimates of displayed
  expressions, not of felt emotions.
- Demographic balance of FER2013 is undocumented; performance across groups is unmeasured.
- Probabilities were temperature-calibrated on PublicTest; calibration on webcam data is unknown.
- The int8 speed relies on onnxruntime's integer kernels; CPUs without AVX-512 VNNI run the file markedly
  slower (re-measure with `make bench`).
- PrivateTest n=3589 gives a 95% interval of about ±1.5 points on accuracy; differences of a few tenths are noise.
"""
    p = Path(path)
    p.write_text(text)
    return p
