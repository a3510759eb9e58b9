"""`python -m inference analyze|bench|fetch-detector|evaluate` (see `python -m inference -h`).

`analyze FILE... --json` prints one JSON object per line: per image {"file", "faces": [{"box", "score",
"emotions", "dominant"}]}; per video frame the same plus "frame" and "time_ms"; per unreadable file
{"file", "error"}. Any error makes the exit status non-zero (1); the other files are still analysed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from inference.bench import run_bench
from inference.detect import fetch_detector, file_sha256
from inference.model import ModelContractError
from inference.pipeline import FrameReading, Pipeline, get_pipeline
from inference.resources import YUNET_SHA256, YUNET_URL, default_detector_path, default_model_path, shared_dir

VIDEO_BATCH = 32  # frames per model call when analysing a video


class SourceError(Exception):
    """A file that cannot be analysed (missing, unreadable, not an image or video)."""


def _open_video(path: Path) -> tuple[cv2.VideoCapture, list[np.ndarray]] | None:
    """The capture and its first two frames when `path` is a multi-frame video, else None.

    Tried before the image decoder because OpenCV's imread happily decodes the first frame of an MJPEG
    stream; conversely a still image opens as a one-frame "video", hence the two-frame test.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        return None
    frames = []
    for _ in range(2):
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    if len(frames) == 2:
        return capture, frames
    capture.release()
    return None


def _video_frames(
    capture: cv2.VideoCapture, first: list[np.ndarray]
) -> Iterator[tuple[list[np.ndarray], list[int], list[float]]]:
    """Batches of (frames, indices, times in ms) from an opened video."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 else 30.0
    pending, index = list(first), 0
    try:
        while True:
            while len(pending) < VIDEO_BATCH:
                ok, frame = capture.read()
                if not ok:
                    break
                pending.append(frame)
            if not pending:
                return
            indices = list(range(index, index + len(pending)))
            yield pending, indices, [i * 1000.0 / fps for i in indices]
            index += len(pending)
            finished = len(pending) < VIDEO_BATCH
            pending = []
            if finished:
                return
    finally:
        capture.release()


def _read_image(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), np.uint8)  # fromfile + imdecode: works with non-ASCII paths
    except OSError as error:
        raise SourceError(f"cannot read file: {error.strerror or error}") from error
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError("not an image or video OpenCV can decode")
    return image


def analyze_file(pipeline: Pipeline, name: str) -> Iterator[dict[str, object]]:
    """JSON-able records for one file: one per image, one per video frame, or one error record."""
    path = Path(name)
    if not path.exists():
        yield {"file": name, "error": "file not found"}
        return
    if not path.is_file():
        yield {"file": name, "error": "not a regular file"}
        return
    try:
        video = _open_video(path)
        if video is None:
            reading = pipeline.analyze_images([_read_image(path)])[0]
            yield _record(name, reading)
            return
        for frames, indices, times in _video_frames(*video):
            for reading, index, time_ms in zip(pipeline.analyze_images(frames), indices, times, strict=True):
                yield _record(name, reading) | {"frame": index, "time_ms": round(time_ms, 3)}
    except SourceError as error:
        yield {"file": name, "error": str(error)}
    except cv2.error as error:  # a corrupt file can make OpenCV raise mid-stream
        yield {"file": name, "error": f"OpenCV could not process the file: {error.err or error}"}


def _record(name: str, reading: FrameReading) -> dict[str, object]:
    if reading.error:
        return {"file": name, "error": reading.error}
    return {"file": name, "faces": [face.to_dict() for face in reading.faces]}


def _describe(record: dict[str, object]) -> str:
    """One human-readable line per record (the non --json output)."""
    where = str(record["file"])
    if "frame" in record:
        where += f" frame {record['frame']} ({record['time_ms']:.0f} ms)"
    if "error" in record:
        return f"{where}: ERROR {record['error']}"
    faces = record["faces"]
    if not faces:
        return f"{where}: no face"
    parts = [
        f"{face['dominant']} {face['emotions'][face['dominant']]:.2f} at {tuple(face['box'])}"
        for face in faces  # type: ignore[union-attr]
    ]
    return f"{where}: " + "; ".join(parts)


def _load_pipeline(args: argparse.Namespace) -> Pipeline:
    if args.model is None and args.detector is None:
        return get_pipeline()
    return Pipeline(model_path=args.model, detector_path=args.detector)


def command_analyze(args: argparse.Namespace) -> int:
    try:
        pipeline = _load_pipeline(args)
    except Exception as error:  # noqa: BLE001 (a CLI reports, it does not dump tracebacks)
        print(f"error: cannot load the inference pipeline: {error}", file=sys.stderr)
        return 2
    failed = False
    for name in args.files:
        for record in analyze_file(pipeline, name):
            failed |= "error" in record
            print(json.dumps(record) if args.json else _describe(record), flush=True)
    return 1 if failed else 0


def command_fetch_detector(args: argparse.Namespace) -> int:
    available = default_detector_path()
    if not args.force and args.output is None and available is not None and available.is_file():
        # `make run` calls this every time: nothing to download when a verified YuNet is already configured.
        if file_sha256(available) == YUNET_SHA256:
            print(f"YuNet face detector already available (sha256 verified): {available}")
            return 0
    fetch_detector(url=args.url, destination=args.output, timeout_s=args.timeout)
    return 0  # by design even on failure: no YuNet just means the Haar cascade is used


EVALUATION_PROTOCOL = {
    "output": "the model output evaluated (`--output`, default the one its metadata names) and its labels; "
    "every output is measured the same way, so the heads of one file compare side by side.",
    "fer2013": "FER2013 PrivateTest (never used for training or selection), original 7 labels, through the "
    "product loader (inference.model); the prediction is the argmax over the 7 FER2013 labels (a label "
    "FER2013 lacks, e.g. contempt, is dropped and the row renormalised); macro-F1 and recall per class; "
    "confusion_matrix rows = true label, columns = predicted, in confusion_labels order.",
    "ferplus": "the same PrivateTest rows relabelled by the FER+ votes (10 annotators per image): the label "
    "is the majority vote over 8 classes (neutral, happy, surprise, sad, angry, disgust, fear, contempt); "
    "rows whose majority is unknown or not-a-face (NF) are dropped; argmax over those 8 labels (a label the "
    "output lacks can never be predicted).",
    "happy_vs_rest": "smile score = p(happy): accuracy of (dominant label == happy) against (label == "
    "happy), the dominant label taken over all the output's labels, and ROC AUC of p(happy), on FER2013 "
    "labels (fer2013) and on FER+ majority labels (ferplus).",
    "ece": "expected calibration error of the top-1 confidence, 15 equal-width bins.",
    "real_faces": "through the product's own path (Pipeline.analyze_jpegs: decode, detect, align, classify; "
    "the largest face): photos = $PORTAL_SHARED_DIR/data/realfaces_dev (labelled happy/neutral; recall "
    "over the photos whose face was found, confusion row = dominant labels per true label, p(neutral) on "
    "the neutral photos, mean valence and smile score per class); video = $PORTAL_SHARED_DIR/media/"
    "liveportrait_d3.mp4, each frame re-encoded as capture.js does (JPEG quality 80): share of each dominant "
    "label and mean valence, over the relaxed opening (first relaxed_seconds) and the rest. A development "
    "set: used to measure and select, never to train.",
    "size_bytes": "size of the ONNX file.",
    "cpu_crops_per_s_b32_1thread": "face crops per second at batch 32, ONNX Runtime with 1 intra-op thread "
    "(median batch time); absent with --no-speed.",
}


def command_evaluate(args: argparse.Namespace) -> int:
    try:  # inference/training is development material: an installation may leave it out
        from inference.training.evaluate import evaluate_model
        from inference.training.real_faces import evaluate_real_faces
    except ImportError as error:
        message = f"error: `evaluate` is not available: inference/training cannot be imported ({error})"
        print(message, file=sys.stderr)
        return 2
    model = args.model or str(default_model_path())
    try:
        result = evaluate_model(model, args.data_dir, speed=not args.no_speed, output=args.output)
        if not args.no_real_faces:
            result["real_faces"] = evaluate_real_faces(model, shared_dir(), output=args.output)
    except (ModelContractError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001
        print(f"error: evaluation failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    result["protocol"] = EVALUATION_PROTOCOL
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def command_bench(args: argparse.Namespace) -> int:
    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser("analyze", help="faces and emotions in images and videos")
    analyze.add_argument("files", nargs="+", metavar="FILE")
    analyze.add_argument("--json", action="store_true", help="one JSON object per line (image or frame)")
    analyze.add_argument("--model", help="emotion ONNX (default: PORTAL_MODEL_PATH or the shipped model)")
    analyze.add_argument("--detector", help="YuNet ONNX path, or 'haar' (default: see docs)")
    analyze.set_defaults(handler=command_analyze)

    bench = commands.add_parser("bench", help="single-core throughput of the classifier and the pipeline")
    bench.add_argument("--output", default="var/bench/inference.json", help="JSON results file")
    bench.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    bench.add_argument("--model")
    bench.add_argument("--detector")
    bench.add_argument("--all-cores", action="store_true", help="do not pin the process to one CPU core")
    bench.set_defaults(handler=command_bench)

    fetch = commands.add_parser("fetch-detector", help="download YuNet into var/models (Haar if offline)")
    fetch.add_argument("--url", default=YUNET_URL)
    fetch.add_argument("--output", help="destination file (default var/models/<name>.onnx)")
    fetch.add_argument("--timeout", type=float, default=30.0)
    fetch.add_argument("--force", action="store_true", help="download even if a YuNet file is configured")
    fetch.set_defaults(handler=command_fetch_detector)

    evaluate = commands.add_parser(
        "evaluate", help="model metrics on FER2013 PrivateTest, FER+ and real faces"
    )
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--model")
    evaluate.add_argument(
        "--output", help="model output to evaluate (default: its metadata's), e.g. ferplus_probabilities"
    )
    evaluate.add_argument("--data-dir", help="directory with fer2013.npz (default: shared data)")
    evaluate.add_argument("--no-speed", action="store_true", help="skip the throughput measurement")
    evaluate.add_argument("--no-real-faces", action="store_true", help="skip the real-face section")
    evaluate.set_defaults(handler=command_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error worth a traceback
        return 0
