"""Merge member runs into one ensemble ONNX (ensemble.build), then measure and stamp it (pipeline.finalize).

    python -m inference.training.merge_members --config C --summary var/training/emotion.m0.summary.json \\
        var/training/emotion.m1.summary.json --out inference/models/emotion.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ensemble import build
from .pipeline import finalize
from .train import load_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--summary", nargs="+", required=True, help="member summary JSONs (each next to its <name>.fp32.onnx)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", required=True, help="the ensemble config (with `members`)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--notes", default="")
    a = ap.parse_args(argv)
    files = []
    for sp in a.summary:
        s = json.loads(Path(sp).read_text())
        files.append((Path(sp).with_name(Path(sp).name.replace(".summary.json", ".fp32.onnx")), s))
    cfg, config_path = load_config(a.config), a.config
    out = Path(a.out)
    summary = build([(p, s["summary"]) for p, s in files], cfg, out, a.data, out.parent)
    (out.parent / "ensemble.fp32.onnx").unlink(missing_ok=True)
    metrics = finalize(
        out,
        summary=summary,
        cfg=cfg,
        config_path=config_path,
        data_path=a.data,
        hardware=summary["hardware"],
        device=summary["device"],
        notes=a.notes,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
