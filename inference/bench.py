"""`python -m inference bench`: single-core throughput of the classifier and of the whole frame pipeline.

Real frames come from the shared face video, resized to 640x480 (and 320x240, the browser's capture size)
and JPEG-encoded, so decode and detection costs are those of production frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from inference.align import crop_faces
from inference.pipeline import Pipeline, StageTimings
from inference.resources import REPO_ROOT, shared_dir

CLASSIFIER_BATCH = 32
FRAME_BATCH = 32
FRAME_SIZES = ((640, 480), (320, 240))
JPEG_QUALITY = 80


def _pin_to_one_core() -> str:
    """Pin this process to one CPU so the numbers are per core even if a library ignores its thread knob."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to CPU {core}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_bench_frames(count: int = 64) -> list[np.ndarray]:
    """`count` real BGR frames spread over the shared face videos (MJPEG first, it is already 640x480)."""
    media = shared_dir() / "media"
    for name in ("liveportrait_d3_640x480_15fps_8s.mjpeg", "liveportrait_d3.mp4"):
        capture = cv2.VideoCapture(str(media / name))
        frames = []
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        if len(frames) >= 2:
            picks = np.linspace(0, len(frames) - 1, count).astype(int)
            return [frames[i] for i in picks]
    raise FileNotFoundError(f"no readable face video in {media} (set PORTAL_SHARED_DIR)")


def _encode(frames: list[np.ndarray], size: tuple[int, int]) -> list[bytes]:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    return [
        cv2.imencode(".jpg", cv2.resize(frame, size, interpolation=cv2.INTER_AREA), params)[1].tobytes()
        for frame in frames
    ]


def bench_classifier(pipeline: Pipeline, frames: list[np.ndarray], seconds: float) -> dict[str, float]:
    """Crops/s of EmotionModel.predict at batch 32 on real aligned face crops (median batch time)."""
    model = pipeline.model
    crops = [
        crop_faces(
            frame, pipeline.detect_faces(frame), pipeline.detector, model.input_size, model.input_channels
        )
        for frame in frames[:CLASSIFIER_BATCH]
    ]
    pool = np.concatenate(crops)
    batch = pool[np.arange(CLASSIFIER_BATCH) % len(pool)]
    for _ in range(3):
        model.predict(batch)
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < 10:
        started = time.perf_counter()
        model.predict(batch)
        durations.append(time.perf_counter() - started)
    median = float(np.median(durations))
    return {"batch": CLASSIFIER_BATCH, "ms_per_batch": median * 1e3, "crops_per_s": CLASSIFIER_BATCH / median}


def bench_frames(pipeline: Pipeline, jpegs: list[bytes], seconds: float) -> dict[str, object]:
    """Frames/s of analyze_jpegs (decode + detect + align + classify) in batches of 32, per-stage ms/frame."""
    batches = [jpegs[start : start + FRAME_BATCH] for start in range(0, len(jpegs), FRAME_BATCH)]
    pipeline.analyze_jpegs(batches[0])  # warm-up: first-call allocations, detector creation
    timings = StageTimings()
    wall = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or timings.frames < 2 * FRAME_BATCH:
        for batch in batches:
            started = time.perf_counter()
            pipeline.analyze_jpegs(batch, timings)
            wall += time.perf_counter() - started
    stage_ms = {stage: 1e3 * total / timings.frames for stage, total in timings.as_dict().items()}
    stage_ms["other"] = max(0.0, 1e3 * wall / timings.frames - sum(stage_ms.values()))
    return {
        "batch": FRAME_BATCH,
        "frames": timings.frames,
        "faces_per_frame": timings.faces / timings.frames,
        "frames_per_s": timings.frames / wall,
        "ms_per_frame": 1e3 * wall / timings.frames,
        "stage_ms_per_frame": stage_ms,
        "jpeg_kb": sum(len(blob) for blob in jpegs) / len(jpegs) / 1024,
    }


def _print_table(results: dict[str, object]) -> None:
    classifier = results["classifier"]
    print(f"\nInference bench ({results['setup']['cpu_pinning']}, ORT intra_op 1, cv2 threads 1)")
    print(f"model {results['setup']['model_version']}, detector {results['setup']['detector']}")
    print(f"jpeg decode {results['setup']['jpeg_decode']}")
    print(f"cpu {results['setup']['cpu']}")
    print(
        f"\n  classifier @ batch {classifier['batch']}: {classifier['crops_per_s']:8.0f} crops/s"
        f"  ({classifier['ms_per_batch']:.2f} ms/batch)"
    )
    header = f"\n  {'frames':<9}{'frames/s':>10}{'ms/frame':>10}" + "".join(
        f"{stage:>10}" for stage in ("decode", "detect", "align", "classify", "other")
    )
    print(header + "   (stage ms/frame)")
    for label, row in results["frames"].items():
        stages = row["stage_ms_per_frame"]
        print(
            f"  {label:<9}{row['frames_per_s']:>10.1f}{row['ms_per_frame']:>10.2f}"
            + "".join(
                f"{stages[stage]:>10.2f}" for stage in ("decode", "detect", "align", "classify", "other")
            )
        )
    print(f"\n  written to {results['output']}")


def run_bench(args: argparse.Namespace) -> int:
    pinning = "all cores" if args.all_cores else _pin_to_one_core()
    try:
        pipeline = Pipeline(model_path=args.model, detector_path=args.detector, intra_op_threads=1)
        frames = load_bench_frames()
    except Exception as error:  # noqa: BLE001
        print(f"error: cannot run the bench: {error}")
        return 2
    seconds = max(0.5, args.seconds)
    results: dict[str, object] = {
        "setup": {
            "cpu_pinning": pinning,
            "onnxruntime_intra_op_threads": 1,
            "opencv_threads": cv2.getNumThreads(),
            "model": str(pipeline.model.path),
            "model_version": pipeline.model_version,
            "detector": pipeline.detector_name
            + (
                f" (detects at max side {pipeline.detector.max_side} px, "
                f"retry at {pipeline.detector.retry_max_side} px when nothing is found)"
                if hasattr(pipeline.detector, "retry_max_side")
                else ""
            ),
            "jpeg_decode": "full size"
            if not pipeline.decode_min_side
            else f"DCT-scaled to 1/2, 1/4 or 1/8 while the long side stays >= {pipeline.decode_min_side} px",
            "frame_batch": FRAME_BATCH,
            "jpeg_quality": JPEG_QUALITY,
            "cpu": _cpu_name(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "opencv": cv2.__version__,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "classifier": bench_classifier(pipeline, frames, seconds),
        "frames": {
            f"{w}x{h}": bench_frames(pipeline, _encode(frames, (w, h)), seconds) for w, h in FRAME_SIZES
        },
    }
    output = Path(args.output)
    output = output if output.is_absolute() else REPO_ROOT / output
    output.parent.mkdir(parents=True, exist_ok=True)
    results["output"] = str(output.relative_to(REPO_ROOT) if output.is_relative_to(REPO_ROOT) else output)
    output.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)
    return 0
