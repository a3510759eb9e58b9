"""The whole GPU part of a training run as one command, for a lent GPU machine that sees only the repository
and what travels with it (at most 64 MiB; it never sees ../shared).

Here, before:
    python -m inference.training.pack --out .gpu/fer_pack.npz
        Training + PublicTest (never PrivateTest) and the product pipeline's crops of realfaces_dev, for
        selection only (about 54 MB).
There (device `run`, carry [".gpu/fer_pack.npz"], about 10 minutes on one H200):
    PYTHONUNBUFFERED=1 python3 -m inference.training.gpu_run \\
        --config inference/training/configs/gpu_realfaces.json --data .gpu/fer_pack.npz \\
        --out /tmp/gpu_run --deliver $OUT
        The teacher once, then one distilled student per seed, in parallel processes on the one GPU; under
        --out: teacher.pt, per seed emotion.s<k>.{pt,fp32.onnx,onnx,summary.json,log}, gpu_run.log and
        best.json (the seed with the best selection score on PublicTest + the real-face crops). --deliver gets
        what comes back (the device returns at most 8 files, 64 MiB): the selected student's emotion.pt (fp32
        weights), emotion.fp32.onnx and emotion.summary.json, best.json, and logs.tar.gz (every log, config
        and summary).
Here, after (PrivateTest, CPU speed, real faces, card):
    python -m inference.training.finalize --onnx inference/models/emotion.onnx \\
        --from-fp32 <files_at>/emotion.fp32.onnx --summary <files_at>/emotion.summary.json
    and keep emotion.pt (fp32 weights) for later fine-tuning (`init.from_weights`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from .data import load_data
from .pipeline import save_weights

log = logging.getLogger("inference.training")


def seed_config(cfg: dict[str, Any], seed: int, teacher_weights: Path | None) -> dict[str, Any]:
    """The config of one student: `seed`, its own version, and the teacher trained before."""
    student = json.loads(json.dumps(cfg))
    student["seed"] = seed
    student["export"]["version"] = f"{cfg['export']['version']}-s{seed}"
    if teacher_weights is not None:
        student["teacher"]["from_weights"] = str(teacher_weights)
    return student


def train_teacher(cfg: dict[str, Any], data_path: str, device: str, out: Path) -> Path:
    """Fit the config's teacher and save it (fp32) for the students to load."""
    from .train import fit_teacher, prepare  # imports torch (the `train` extra); --help and the tests don't

    prepared = prepare(cfg, load_data(data_path), device)
    net, summary = fit_teacher(cfg, prepared)
    path = save_weights(
        net,
        cfg["teacher"]["model"],
        out / "teacher.pt",
        normalization={"scale": 1 / 255, "mean": prepared.mean, "std": prepared.std},
        summary={k: v for k, v in summary.items() if k != "state"},
    )
    log.info("teacher: %s", json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return path


def best_seed(out: Path, seeds: list[int]) -> dict[str, Any]:
    """The seed whose student scored best on the selection figures (its summary's `score`)."""
    scored = []
    for seed in seeds:
        path = out / f"emotion.s{seed}.summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())["summary"]
            scored.append(
                {"seed": seed, "score": summary["score"], "epoch": summary.get("epoch"), "summary": path.name}
            )
    if not scored:
        raise RuntimeError("no student finished")
    return {"best": max(scored, key=lambda row: row["score"]), "students": scored}


def deliver(out: Path, to: Path, best: dict[str, Any], config_path: str) -> list[Path]:
    """Copy what must come back into `to`: the selected student's weights, fp32 ONNX and summary (its config
    path pointing at the repo's config), best.json, and every log, config and summary as one archive."""
    to.mkdir(parents=True, exist_ok=True)
    name = f"emotion.s{best['best']['seed']}"
    shutil.copyfile(out / f"{name}.pt", to / "emotion.pt")
    shutil.copyfile(out / f"{name}.fp32.onnx", to / "emotion.fp32.onnx")
    summary = json.loads((out / f"{name}.summary.json").read_text())
    summary["config_path"] = config_path
    (to / "emotion.summary.json").write_text(json.dumps(summary, indent=2))
    (to / "best.json").write_text(json.dumps(best, indent=2))
    with tarfile.open(to / "logs.tar.gz", "w:gz") as archive:
        for path in sorted(out.iterdir()):
            if path.suffix in (".log", ".json"):
                archive.add(path, arcname=path.name)
    return sorted(to.iterdir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m inference.training.gpu_run", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, help="the pack (inference.training.pack)")
    ap.add_argument("--out", required=True, help="everything written goes here")
    ap.add_argument("--deliver", help="copy what must come back here ($OUT on the device; at most 8 files)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=4, help="torch CPU threads per student process")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(out / "gpu_run.log", mode="w")],
    )
    started = time.time()
    cfg = json.loads(Path(a.config).read_text())
    log.info("gpu_run %s seeds %s device %s", a.config, a.seeds, a.device)
    teacher = train_teacher(cfg, a.data, a.device, out) if "teacher" in cfg else None
    log.info("teacher done after %.0f s", time.time() - started)
    processes = []
    for seed in a.seeds:
        config_path = out / f"config.s{seed}.json"
        config_path.write_text(json.dumps(seed_config(cfg, seed, teacher), indent=2))
        command = [
            sys.executable, "-m", "inference.training", "--config", str(config_path), "--device", a.device,
            "--data", a.data, "--out", str(out), "--workdir", str(out), "--name", f"emotion.s{seed}",
            "--threads", str(a.threads), "--no-eval", "--no-speed",
        ]  # fmt: skip
        processes.append((seed, subprocess.Popen(command)))
    failed = [seed for seed, process in processes if process.wait() != 0]
    log.info("students done after %.0f s (failed: %s)", time.time() - started, failed or "none")
    result = best_seed(out, a.seeds)
    result["seconds"] = round(time.time() - started, 1)
    (out / "best.json").write_text(json.dumps(result, indent=2))
    log.info("best: %s", json.dumps(result["best"]))
    if a.deliver:
        delivered = deliver(out, Path(a.deliver), result, a.config)
        log.info("delivered: %s", ", ".join(f"{p.name} ({p.stat().st_size:,} B)" for p in delivered))
    return 1 if failed and len(failed) == len(a.seeds) else 0


if __name__ == "__main__":
    sys.exit(main())
