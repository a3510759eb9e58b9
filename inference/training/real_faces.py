"""How a model reads real faces, measured through the product's own path: decode, detect, align, classify.

FER2013 accuracy is measured on 48x48 crops cut by the dataset's makers; what participants get is the
pipeline's reading of a webcam frame. Two sets from the shared material (../shared/README.md):
- `data/realfaces_dev/`: labelled photographs (happy, neutral). Face-found rate, per-class recall and
  confusion row, p(neutral) on the neutral photos, mean valence and smile score per class.
- `media/liveportrait_d3.mp4`: a real face video without labels (relaxed first, then a frown and a
  surprise). Share of each dominant label, and mean valence over the first seconds (relaxed) and the rest.
Each JPEG/frame goes through `Pipeline.analyze_jpegs`, as a worker runs it; the participant is the largest
face. Use these sets to measure and select, never to train.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inference.pipeline import FrameReading, Pipeline

PHOTOS_DIR = Path("data") / "realfaces_dev"
VIDEO_FILE = Path("media") / "liveportrait_d3.mp4"
# The clip's opening seconds show a relaxed face (shared/README.md: neutral -> frown -> surprise).
RELAXED_SECONDS = 3.0
# capture.js sends canvas.toBlob(..., "image/jpeg", 0.8): video frames are re-encoded the same way.
CAPTURE_JPEG_QUALITY = 80
BATCH = 32  # frames per pipeline call, as a worker batches them


def read_labelled_photos(photos_dir: Path) -> list[tuple[Path, str]]:
    """(image path, label) from the set's labels.csv (`filename,label`)."""
    with (photos_dir / "labels.csv").open(newline="") as handle:
        return [(photos_dir / row["filename"], row["label"].strip()) for row in csv.DictReader(handle)]


def photo_crops(pipeline: Pipeline, photos_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The pipeline's crop of the largest face of each labelled photo that has one, and its label: what
    the model is given in production, for scoring candidate models during training (selection only)."""
    photos = read_labelled_photos(photos_dir)
    crops: list[np.ndarray] = []
    labels: list[str] = []
    for batch in _batches(photos):
        faces_per_photo = pipeline.crop_jpegs([path.read_bytes() for path, _ in batch])
        for (_, label), faces in zip(batch, faces_per_photo, strict=True):
            if faces is not None and len(faces):
                crops.append(faces[0])
                labels.append(label)
    return np.stack(crops), labels


def _batches(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _primary_readings(pipeline: Pipeline, blobs: Sequence[bytes]) -> list[FrameReading]:
    return [reading for batch in _batches(blobs) for reading in pipeline.analyze_jpegs(list(batch))]


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate_photos(pipeline: Pipeline, photos_dir: Path) -> dict[str, Any]:
    """Face-found rate, per-class recall and confusion row, p(neutral) on neutral photos, mean valence and
    smile score per class. Recall counts the photos whose face was found (a photo without a face is in the
    face-found rate, not in the recall)."""
    photos = read_labelled_photos(photos_dir)
    labels = pipeline.labels
    readings = _primary_readings(pipeline, [path.read_bytes() for path, _ in photos])
    classes = sorted({label for _, label in photos})
    happy = labels.index("happy") if "happy" in labels else None
    neutral = labels.index("neutral") if "neutral" in labels else None
    per_class: dict[str, dict[str, Any]] = {}
    found_total = 0
    for name in classes:
        faces = [
            reading.primary_face
            for (_, label), reading in zip(photos, readings, strict=True)
            if label == name and reading.primary_face is not None
        ]
        total = sum(1 for _, label in photos if label == name)
        found_total += len(faces)
        probabilities = np.array([face.probabilities for face in faces]).reshape(len(faces), len(labels))
        dominant = probabilities.argmax(axis=1)
        row = np.bincount(dominant, minlength=len(labels))
        valences = [face.valence for face in faces if face.valence is not None]
        entry: dict[str, Any] = {
            "n": total,
            "face_found": len(faces),
            "face_found_rate": _rate(len(faces), total),
            "recall": _rate(int(row[labels.index(name)]), len(faces)) if name in labels else None,
            "confusion_row": {label: int(count) for label, count in zip(labels, row, strict=True)},
            "mean_valence": _mean(valences),
            "mean_smile": _mean(probabilities[:, happy]) if happy is not None else None,
            "mean_p_neutral": _mean(probabilities[:, neutral]) if neutral is not None else None,
        }
        per_class[name] = entry
    recalls = [entry["recall"] for entry in per_class.values() if entry["recall"] is not None]
    return {
        "set": str(photos_dir),
        "n": len(photos),
        "face_found_rate": _rate(found_total, len(photos)),
        "balanced_recall": _mean(recalls),
        "mean_p_neutral_on_neutral": per_class.get("neutral", {}).get("mean_p_neutral"),
        "classes": per_class,
    }


def video_jpegs(path: Path, quality: int = CAPTURE_JPEG_QUALITY) -> tuple[list[bytes], float]:
    """Every frame of a video as the JPEG a browser would send, and the container's frame rate."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    blobs = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            encoded, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if encoded:
                blobs.append(jpeg.tobytes())
    finally:
        capture.release()
    if not blobs:
        raise ValueError(f"no frames in video {path}")
    return blobs, float(fps)


def evaluate_video(
    pipeline: Pipeline, path: Path, relaxed_seconds: float = RELAXED_SECONDS
) -> dict[str, Any]:
    """Share of each dominant label over the frames with a face, overall and for the relaxed opening and the
    rest, with mean valence and smile score of each part."""
    blobs, fps = video_jpegs(path)
    labels = pipeline.labels
    readings = _primary_readings(pipeline, blobs)
    times = np.arange(len(blobs)) / fps
    faces = [(time, reading.primary_face) for time, reading in zip(times, readings, strict=True)]
    found = [(time, face) for time, face in faces if face is not None]
    happy = labels.index("happy") if "happy" in labels else None

    def part(selected: list) -> dict[str, Any]:
        dominant = np.bincount([labels.index(face.dominant) for _, face in selected], minlength=len(labels))
        valences = [face.valence for _, face in selected if face.valence is not None]
        return {
            "frames": len(selected),
            "dominant_share": {
                label: _rate(int(count), len(selected)) for label, count in zip(labels, dominant, strict=True)
            },
            "mean_valence": _mean(valences),
            "mean_smile": None
            if happy is None
            else _mean([face.probabilities[happy] for _, face in selected]),
        }

    return {
        "video": str(path),
        "frames": len(blobs),
        "fps": fps,
        "face_found_rate": _rate(len(found), len(blobs)),
        "all": part(found),
        "relaxed_seconds": relaxed_seconds,
        "relaxed": part([item for item in found if item[0] < relaxed_seconds]),
        "rest": part([item for item in found if item[0] >= relaxed_seconds]),
    }


def evaluate_real_faces(
    model_path: str | Path,
    shared: Path,
    *,
    output: str | None = None,
    detector_path: str | Path | None = None,
) -> dict[str, Any]:
    """The `real_faces` section of `python -m inference evaluate`: photos and video, read by `output`.

    A set missing from `shared` is reported as {"available": false, "reason"} rather than failing."""
    pipeline = Pipeline(model_path=model_path, detector_path=detector_path, output=output)
    report: dict[str, Any] = {
        "output": pipeline.model.output_name,
        "labels": list(pipeline.labels),
        "detector": pipeline.detector_name,
    }
    photos_dir, video = shared / PHOTOS_DIR, shared / VIDEO_FILE
    report["photos"] = (
        evaluate_photos(pipeline, photos_dir)
        if (photos_dir / "labels.csv").is_file()
        else {"available": False, "reason": f"{photos_dir / 'labels.csv'} not found"}
    )
    report["video"] = (
        evaluate_video(pipeline, video)
        if video.is_file()
        else {"available": False, "reason": f"{video} not found"}
    )
    return report
