"""Measure an exported model here (PrivateTest, CPU speed), stamp metadata, write the card.

Used after a GPU run that had no PrivateTest data (the packed carry holds Training+PublicTest):

    python -m inference.training.finalize --onnx inference/models/emotion.onnx \\
        --summary var/training/emotion.summary.json

An exported file whose training run is gone, re-stamped with its default output chosen again on PublicTest +
realfaces_dev (`pipeline.choose_default_output`), a new version and its card (same weights):

    python -m inference.training.finalize --restamp --onnx inference/models/emotion.onnx \
        --out inference/models/emotion.onnx --version V --training-notes notes.md

Horizontal-flip averaging folded into an exported file (graph surgery, no torch, no summary needed;
keeps every metadata entry, sets `version` and `flip_tta`, re-measures and stamps `metrics`):

    python -m inference.training.finalize --add-flip-tta --onnx inference/models/emotion.onnx \\
        --out var/training/emotion.flip.onnx [--average logits|probabilities] [--version V]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from .data import TRAIN, load_data
from .evaluate import read_metadata
from .export import add_flip_tta, calibration_batch, quantize_int8
from .pipeline import finalize, restamp, restamp_default_output


def add_flip_tta_cli(
    src: str, out: str, average: str, version: str | None, data: str | None, speed: bool
) -> dict[str, Any]:
    """`export.add_flip_tta` + `pipeline.restamp`: the flip file, measured (Private-/PublicTest, speed)."""
    old_version = read_metadata(src)["version"]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:  # --out may be --onnx itself
        staged = add_flip_tta(src, Path(tmp) / out_path.name, average=average)
        updates = {"version": version or f"{old_version}-flip", "flip_tta": {"average": average}}
        metrics = restamp(staged, data, updates=updates, speed=speed)
        staged.replace(out_path)
    metrics["model"] = str(out_path)
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--summary", help="<name>.summary.json from the training run (not with --add-flip-tta)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--config", default=None, help="config to use instead of the one in --summary")
    ap.add_argument("--card", default=None, help="card path (default: next to the ONNX file)")
    ap.add_argument("--notes", default="", help="extra Markdown for the Reproduce section")
    ap.add_argument(
        "--from-fp32",
        default=None,
        help="re-run the config's int8 quantization from this fp32 export into --onnx first",
    )
    ap.add_argument("--restamp", action="store_true", help="choose the default output of --onnx again")
    ap.add_argument("--training-notes", help="with --restamp: Markdown for the card's training section")
    flip = ap.add_argument_group("flip averaging (graph surgery on --onnx; card left as is)")
    flip.add_argument("--add-flip-tta", action="store_true", help="write --out: --onnx with flip averaging")
    flip.add_argument("--out", help="output ONNX for --add-flip-tta (may equal --onnx)")
    flip.add_argument("--average", choices=("logits", "probabilities"), default="logits")
    flip.add_argument(
        "--version", help="new `version` metadata (--add-flip-tta default: the old one + '-flip')"
    )
    flip.add_argument("--no-speed", action="store_true", help="skip the CPU speed measurement")
    a = ap.parse_args(argv)
    if a.add_flip_tta:
        if not a.out:
            ap.error("--add-flip-tta needs --out")
        print(
            json.dumps(
                add_flip_tta_cli(a.onnx, a.out, a.average, a.version, a.data, not a.no_speed), indent=2
            )
        )
        return
    if a.restamp:
        if not (a.out and a.version and a.training_notes):
            ap.error("--restamp needs --out, --version and --training-notes")
        metrics = restamp_default_output(
            Path(a.onnx),
            Path(a.out),
            version=a.version,
            data_path=a.data,
            training_notes=Path(a.training_notes),
            speed=not a.no_speed,
        )
        print(json.dumps(metrics, indent=2))
        return
    if not a.summary:
        ap.error("--summary is required (unless --add-flip-tta or --restamp)")
    s = json.loads(Path(a.summary).read_text())
    summary, cfg = s["summary"], s["config"]
    if a.config:
        cfg = json.loads(Path(a.config).read_text())
        s["config_path"] = a.config
    if a.from_fp32:
        data = load_data(a.data)
        calib = calibration_batch(data.images, data.split(TRAIN), cfg, summary["normalization"])
        quantize_int8(a.from_fp32, a.onnx, calib)
    metrics = finalize(
        Path(a.onnx),
        summary=summary,
        cfg=cfg,
        config_path=s["config_path"],
        data_path=a.data,
        hardware=summary["hardware"],
        device=summary["device"],
        card_path=Path(a.card) if a.card else None,
        notes=a.notes,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
