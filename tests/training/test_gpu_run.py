"""The whole GPU part of a training run as one command (inference/training/gpu_run.py), run here on the CPU
with the seconds-long smoke config and a small pack: teacher once, a student per seed in parallel processes,
fp32 weights + ONNX + logs, the best seed; then `finalize` measures one here, chooses its default output on
PublicTest + realfaces_dev, stamps its metadata and writes its card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from inference.model import EmotionModel
from inference.training.train import load_weights

SMOKE = Path("inference/training/configs/smoke.json")


def test_gpu_run_then_finalize(small_pack: Path, shared_subset: Path, tmp_path: Path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "inference.training.gpu_run",
        "--config",
        str(SMOKE),
        "--data",
        str(small_pack),
    ]
    delivered = tmp_path / "delivered"
    command += ["--out", str(out), "--deliver", str(delivered), "--seeds", "0", "1", "--device", "cpu"]
    command += ["--threads", "1"]
    # The real-face figures (selection, finalize) over a few photos: the run's shape is what is checked here.
    env = {**os.environ, "PORTAL_SHARED_DIR": str(shared_subset)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    best = json.loads((out / "best.json").read_text())
    assert {row["seed"] for row in best["students"]} == {0, 1}
    assert best["best"]["score"] == max(row["score"] for row in best["students"])
    assert (out / "teacher.pt").is_file() and "best:" in (out / "gpu_run.log").read_text()
    seed = best["best"]["seed"]
    for suffix in (".pt", ".fp32.onnx", ".onnx", ".summary.json", ".log"):
        assert (out / f"emotion.s{seed}{suffix}").is_file(), suffix
    # the students learned from the teacher trained before them, and their fp32 weights reload
    config = json.loads((out / f"config.s{seed}.json").read_text())
    assert config["seed"] == seed and config["teacher"]["from_weights"] == str(out / "teacher.pt")
    net, saved = load_weights(out / f"emotion.s{seed}.pt")
    assert saved["version"].endswith(f"-s{seed}") and saved["normalization"]["std"] > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())
    summary = json.loads((out / f"emotion.s{seed}.summary.json").read_text())["summary"]
    assert {"public_ferplus_acc", "real_ferplus_recall", "score"} <= set(summary)

    # what comes back from the device: at most 8 files, the selected student's
    names = sorted(path.name for path in delivered.iterdir())
    assert names == ["best.json", "emotion.fp32.onnx", "emotion.pt", "emotion.summary.json", "logs.tar.gz"]
    assert (delivered / "emotion.pt").read_bytes() == (out / f"emotion.s{seed}.pt").read_bytes()
    assert json.loads((delivered / "emotion.summary.json").read_text())["config_path"] == str(SMOKE)

    shipped = tmp_path / "emotion.onnx"
    command = [sys.executable, "-m", "inference.training.finalize", "--onnx", str(shipped), "--no-speed"]
    command += ["--from-fp32", str(delivered / "emotion.fp32.onnx"), "--summary"]
    command += [str(delivered / "emotion.summary.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    model = EmotionModel(shipped)
    assert model.version == saved["version"] and model.output_name in (
        "probabilities",
        "ferplus_probabilities",
    )
    assert set(model.metadata.outputs) == {"probabilities", "ferplus_probabilities"}
    card = shipped.with_suffix(".md").read_text()
    assert "## The default output" in card and f"Chosen: **`{model.output_name}`**" in card
    assert "Real photographs" in card and "Real face video" in card
    report = json.loads(done.stdout)
    assert report["output"] == model.output_name and report["labels"] == list(model.labels)
    assert {"fer2013", "ferplus", "public", "real_faces", "other_outputs"} <= set(report)
    assert model.metadata.metrics["ferplus_majority_accuracy"] == round(report["ferplus"]["accuracy"], 4)
