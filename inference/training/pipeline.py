"""End to end: train -> select on PublicTest -> export ONNX -> measure on PrivateTest -> card."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from .card import write_card
from .data import PUBLIC, load_data
from .evaluate import evaluate_model, read_metadata
from .export import contract_metadata, set_metadata

log = logging.getLogger("inference.training")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def metadata_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The compact metrics dict stored in ONNX metadata `metrics`."""
    fer = m["fer2013"]
    r4 = lambda v: round(float(v), 4)  # noqa: E731
    out = {
        "split": "PrivateTest",
        "fer2013_accuracy": r4(fer["accuracy"]),
        "fer2013_macro_f1": r4(fer["macro_f1"]),
        "fer2013_per_class_recall": {k: r4(v) for k, v in fer["per_class_recall"].items()},
        "happy_vs_rest_accuracy": r4(fer["happy_vs_rest_accuracy"]),
        "happy_vs_rest_auc": r4(fer["happy_vs_rest_auc"]),
        "ece": r4(fer["ece"]),
        "size_bytes": m["size_bytes"],
    }
    if "ferplus" in m:
        out["ferplus_majority_accuracy"] = r4(m["ferplus"]["accuracy"])
    if "public" in m:
        out["publictest_fer2013_accuracy"] = r4(m["public"]["fer2013"]["accuracy"])
    if m.get("cpu_crops_per_s_b32_1thread"):
        out["cpu_crops_per_s_b32_1thread"] = round(m["cpu_crops_per_s_b32_1thread"])
        out["speed_hardware"] = m.get("speed_hardware", "")
    return out


def measure_and_stamp(
    onnx_path: Path,
    data_path: str | None,
    *,
    version: str,
    normalization: dict[str, float],
    trained_on: str,
    speed: bool,
) -> dict[str, Any]:
    """Evaluate the exported file and write the full metadata contract into it."""
    meta = contract_metadata(normalization, version, {}, trained_on)
    return _measure_into(onnx_path, data_path, meta, speed)


def restamp(
    onnx_path: Path, data_path: str | None, *, updates: dict[str, Any], speed: bool
) -> dict[str, Any]:
    """Re-measure a file and rewrite its `metrics`, keeping every other metadata entry (plus `updates`).

    For a graph changed after export (e.g. `export.add_flip_tta`) when the training summary is gone.
    """
    import onnx

    meta: dict[str, Any] = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta.update(updates)
    return _measure_into(onnx_path, data_path, meta, speed)


def _measure_into(
    onnx_path: Path, data_path: str | None, meta: dict[str, Any], speed: bool
) -> dict[str, Any]:
    """PrivateTest (+speed) and PublicTest metrics of the file, stamped as `metrics` into `meta`."""
    data = load_data(data_path)
    set_metadata(onnx_path, {**meta, "metrics": {}})
    metrics = evaluate_model(onnx_path, data=data, speed=speed)
    metrics["public"] = evaluate_model(onnx_path, data=data, split=PUBLIC, speed=False)
    if speed:
        metrics["speed_hardware"] = f"{cpu_name()}, 1 thread, onnxruntime"
    for _ in range(2):  # the size depends on the metrics string itself; converge
        set_metadata(onnx_path, {**meta, "metrics": metadata_metrics(metrics)})
        metrics["size_bytes"] = onnx_path.stat().st_size
    set_metadata(onnx_path, {**meta, "metrics": metadata_metrics(metrics)})
    return metrics


def finalize(
    onnx_path: Path,
    *,
    summary: dict[str, Any],
    cfg: dict[str, Any],
    config_path: str,
    data_path: str | None,
    hardware: str,
    device: str,
    speed: bool = True,
    card_path: Path | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """Measure the exported file on PrivateTest (+PublicTest), stamp its metadata, write the card."""
    from .data import repo_root

    trained_on = (
        f"FER2013 Training + FER+ votes; selected on PublicTest; {hardware}; config {Path(config_path).name}"
    )
    metrics = measure_and_stamp(
        onnx_path,
        data_path,
        version=cfg["export"]["version"],
        normalization=summary["normalization"],
        trained_on=trained_on,
        speed=speed,
    )
    rel = os.path.relpath(Path(config_path).resolve(), repo_root())
    write_card(
        card_path or onnx_path.with_suffix(".md"),
        version=cfg["export"]["version"],
        cfg=cfg,
        config_path=rel,
        summary=summary,
        metrics=metrics,
        command=f"python -m inference.training --config {rel} --device {device}",
        hardware=hardware,
        notes=notes,
    )
    return metrics


def member_config(cfg: dict[str, Any], k: int) -> dict[str, Any]:
    """Config of ensemble member k: the base config with the member's overrides (one level deep)."""
    m = json.loads(json.dumps({key: v for key, v in cfg.items() if key != "members"}))
    for key, v in cfg["members"][k].items():
        if isinstance(v, dict) and isinstance(m.get(key), dict):
            m[key] = {**m[key], **v}
        else:
            m[key] = v
    return m


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m inference.training",
        description="Train, select, export and document the emotion model.",
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--data", default=None, help="shared data dir or packed npz (default $PORTAL_SHARED_DIR/data)"
    )
    ap.add_argument("--out", default=None, help="model dir (default inference/models)")
    ap.add_argument("--name", default="emotion")
    ap.add_argument("--workdir", default=None, help="logs/summary (default var/training)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--no-speed", action="store_true", help="skip the CPU speed measurement")
    ap.add_argument(
        "--no-eval",
        action="store_true",
        help="export only (data without PrivateTest); run inference.training.finalize later",
    )
    ap.add_argument("--hardware", default=None, help="free text for the card")
    ap.add_argument(
        "--member",
        type=int,
        default=None,
        help="ensemble configs: train only this member and write its fp32 file",
    )
    a = ap.parse_args(argv)

    import torch

    from .data import repo_root
    from .export import contract_metadata, export_onnx, set_metadata
    from .train import load_config, train

    torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    out_dir = Path(a.out) if a.out else Path(__file__).resolve().parents[1] / "models"
    work = Path(a.workdir) if a.workdir else repo_root() / "var" / "training"
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(work / f"{a.name}.log", mode="w")],
    )
    cfg = load_config(a.config)
    log.info("config %s: %s", a.config, json.dumps(cfg))
    if device == "cuda":
        hw = f"1x {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    else:
        hw = f"{cpu_name()}, {a.threads} torch threads (torch {torch.__version__})"
    hardware = a.hardware or hw
    onnx_path = out_dir / f"{a.name}.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(a.data)

    if "members" in cfg:
        # ensemble: each member = teacher + student trained with its overrides, then merged
        todo = [a.member] if a.member is not None else list(range(len(cfg["members"])))
        files = []
        for k in todo:
            mcfg = member_config(cfg, k)
            net, msum = train(mcfg, data, device)
            msum.update(hardware=hardware, device=device)
            fp = work / f"{a.name}.m{k}.fp32.onnx"
            export_onnx(
                net,
                fp,
                flip_tta=mcfg["export"].get("flip_tta", False),
                t_fer=msum["temperature_fer"],
                t_ferplus=msum["temperature_ferplus"],
            )
            (work / f"{a.name}.m{k}.summary.json").write_text(
                json.dumps(
                    {"summary": msum, "config": cfg, "member_config": mcfg, "config_path": a.config}, indent=2
                )
            )
            files.append((fp, msum))
        if a.member is not None:
            log.info("member %d written to %s", a.member, work)
            return
        from .ensemble import build

        summary = build(files, cfg, onnx_path, a.data, work)
    else:
        net, summary = train(cfg, data, device)
        summary.update(hardware=hardware, device=device)
        quant = cfg["export"].get("quantize")
        fp32_path = work / f"{a.name}.fp32.onnx" if quant else onnx_path
        export_onnx(
            net,
            fp32_path,
            flip_tta=cfg["export"].get("flip_tta", False),
            t_fer=summary["temperature_fer"],
            t_ferplus=summary["temperature_ferplus"],
        )
        if quant == "int8":
            from .data import TRAIN
            from .export import calibration_batch, quantize_int8

            calib = calibration_batch(data.images, data.split(TRAIN), cfg, summary["normalization"])
            quantize_int8(fp32_path, onnx_path, calib)
        elif quant:
            raise ValueError(f"unknown export.quantize {quant!r}")
    (work / f"{a.name}.summary.json").write_text(
        json.dumps({"summary": summary, "config": cfg, "config_path": a.config}, indent=2)
    )
    if a.no_eval:
        set_metadata(
            onnx_path, contract_metadata(summary["normalization"], cfg["export"]["version"], {}, hardware)
        )
        return
    metrics = finalize(
        onnx_path,
        summary=summary,
        cfg=cfg,
        config_path=a.config,
        data_path=a.data,
        hardware=hardware,
        device=device,
        speed=not a.no_speed,
    )
    (work / f"{a.name}.metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("metrics %s", json.dumps(read_metadata(onnx_path).get("metrics")))
