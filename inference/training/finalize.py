"""Measure an exported model here (PrivateTest, CPU speed), stamp metadata, write the card.

Used after a GPU run that had no PrivateTest data (the packed carry holds Training+PublicTest):

    python -m inference.training.finalize --onnx inference/models/emotion.onnx \\
        --summary var/training/emotion.summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .pipeline import finalize


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--summary", required=True, help="<name>.summary.json from the training run")
    ap.add_argument("--data", default=None)
    ap.add_argument("--config", default=None, help="config to use instead of the one in --summary")
    ap.add_argument("--card", default=None, help="card path (default: next to the ONNX file)")
    ap.add_argument("--notes", default="", help="extra Markdown for the Reproduce section")
    ap.add_argument(
        "--from-fp32",
        default=None,
        help="re-run the config's int8 quantization from this fp32 export into --onnx first",
    )
    a = ap.parse_args(argv)
    s = json.loads(Path(a.summary).read_text())
    summary, cfg = s["summary"], s["config"]
    if a.config:
        cfg = json.loads(Path(a.config).read_text())
        s["config_path"] = a.config
    if a.from_fp32:
        from .data import TRAIN, load_data
        from .export import calibration_batch, quantize_int8

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
