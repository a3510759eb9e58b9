"""Frames in, readings out: decode -> detect -> align -> classify, with ONE model call per batch.

`get_pipeline()` gives each process one Pipeline (one ONNX Runtime session, one detector per thread).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inference.align import TEMPLATE_SIZE, RollRefiner, crop_faces, face_geometry, pose_angles, roll_angles
from inference.attention import attending_faces
from inference.detect import Detection, FaceDetector, create_detector, scale_detections
from inference.model import EmotionModel
from inference.quality import FaceQuality, crop_statistics, face_qualities
from inference.resources import default_detector_path, default_model_path

HAAR = "haar"  # pass as detector_path to force OpenCV's Haar cascade


@dataclass(frozen=True)
class FaceReading:
    """One face: box (x, y, w, h) in frame pixels, detector score, and probabilities in the order of `labels`
    (the model's labels, from its metadata: `EmotionModel.labels`)."""

    box: tuple[int, int, int, int]
    score: float
    probabilities: np.ndarray
    labels: tuple[str, ...] = field(default=(), compare=False, repr=False)
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)
    quality: FaceQuality | None = field(default=None, compare=False)
    valence: float | None = None  # only when the model's metadata defines valence weights
    # Head pose from the landmarks (align.pose_angles) and whether it is turned to the screen
    # (attention.attending_faces); None without landmarks (Haar).
    yaw: float | None = field(default=None, compare=False)
    pitch: float | None = field(default=None, compare=False)
    attending: bool | None = field(default=None, compare=False)

    @property
    def emotions(self) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, self.probabilities, strict=True)}

    @property
    def dominant(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_dict(self) -> dict[str, object]:
        """The CLI's JSON shape: box, score, emotions, dominant."""
        return {
            "box": list(self.box),
            "score": round(self.score, 4),
            "emotions": {label: round(p, 6) for label, p in self.emotions.items()},
            "dominant": self.dominant,
        }


@dataclass(frozen=True)
class FrameReading:
    """All faces found in one frame (largest first), or `error` when the frame could not be read."""

    faces: list[FaceReading]
    error: str | None = None

    @property
    def primary_face(self) -> FaceReading | None:
        """The largest face: the participant in front of the webcam."""
        return self.faces[0] if self.faces else None


@dataclass
class StageTimings:
    """Seconds spent per stage, accumulated over calls (for `python -m inference bench`)."""

    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    classify: float = 0.0
    frames: int = 0
    faces: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"decode": self.decode, "detect": self.detect, "align": self.align, "classify": self.classify}


def decode_jpeg(blob: bytes) -> np.ndarray | None:
    """BGR image from encoded bytes (JPEG, or anything OpenCV decodes), None if undecodable."""
    if not blob:
        return None
    return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)


_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers (SOF0-SOF15 except DHT C4, JPG C8, DAC CC) carry the image size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(blob: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None if `blob` is not a JPEG."""
    if len(blob) < 4 or blob[0] != 0xFF or blob[1] != 0xD8:
        return None
    index, end = 2, len(blob)
    while index + 4 <= end:
        if blob[index] != 0xFF:
            return None
        marker = blob[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            index += 2
            continue
        if marker in _SOF_MARKERS:
            if index + 9 > end:
                return None
            height = (blob[index + 5] << 8) | blob[index + 6]
            width = (blob[index + 7] << 8) | blob[index + 8]
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        index += 2 + ((blob[index + 2] << 8) | blob[index + 3])
    return None


@dataclass(frozen=True)
class _Frame:
    """A frame to analyse: `image` may be a 1/`reduction` scale decode of the full frame (`blob`)."""

    image: np.ndarray
    height: int  # full-frame size: boxes, landmarks and face_fraction are in full-frame pixels
    width: int
    reduction: int = 1
    blob: bytes | None = None


def decode_frame(blob: bytes, min_side: int | None = None) -> _Frame | None:
    """Decode a frame, at 1/2, 1/4 or 1/8 scale (JPEG DCT scaling: about half the cost of a full decode at
    1/2) when the reduced image still has a long side of at least `min_side` px. None if undecodable."""
    if not blob:
        return None
    size = jpeg_size(blob) if min_side else None
    if size is not None:
        width, height = size
        reduction = max((r for r in _REDUCED_COLOR if max(width, height) / r >= min_side), default=1)
        if reduction > 1:
            image = cv2.imdecode(np.frombuffer(blob, np.uint8), _REDUCED_COLOR[reduction])
            expected = (-(-height // reduction), -(-width // reduction))
            # An EXIF rotation (never in canvas JPEGs) changes the shape: then decode at full size.
            if image is not None and image.shape[:2] == expected:
                return _Frame(image, height, width, reduction, blob)
    image = decode_jpeg(blob)
    return None if image is None else _Frame(image, image.shape[0], image.shape[1])


@dataclass
class _LocatedFaces:
    """The faces of a batch before classification: per frame its detections (or an error), all crops."""

    per_frame: list[list[Detection] | str] = field(default_factory=list)
    crops: np.ndarray | None = None
    frame_areas: np.ndarray | None = None
    rolls: np.ndarray | None = None
    decode_s: float = 0.0
    detect_s: float = 0.0
    align_s: float = 0.0


def _as_bgr(image: np.ndarray | None) -> np.ndarray | str:
    """The image as uint8 BGR, or an error string for what cannot be analysed."""
    if image is None:
        return "no image"
    image = np.asarray(image)
    if image.size == 0 or image.ndim not in (2, 3):
        return f"not an image (shape {image.shape})"
    if image.dtype != np.uint8:
        return f"expected uint8 pixels, got {image.dtype}"
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] != 3:
        return f"unsupported channel count {image.shape[2]}"
    return np.ascontiguousarray(image)  # views (e.g. a slice of a larger frame) are fine too


class Pipeline:
    """Face detection, alignment and emotion classification for batches of frames.

    `model_path` / `detector_path` default to `default_model_path()` / `default_detector_path()`;
    `detector_path="haar"` forces the Haar cascade. Thread-safe: share one instance per process.

    Speed knobs (defaults measured with `python -m inference bench`, see docs/architecture.md):
    `detection_max_side` / `detection_retry_side`: YuNet runs on the frame downscaled to that long side, and
    once more at the retry size on frames where it found nothing. `decode_min_side`: JPEGs are decoded at
    1/2, 1/4 or 1/8 scale when that keeps the long side >= this many px (None: always full size); a frame
    whose face crop would then have fewer pixels than the model's input is decoded again at full size.
    `refine_roll`: level the eyes with `RollRefiner` (the landmarks alone under-read the roll of faces that
    are small in the detector's input); False: the landmarks' eye line only.
    `output`: the model output to read (default: the one its metadata names; see `EmotionModel`).
    `opencv_threads`: OpenCV's thread count, which is process-wide (None: leave it as it is). One, like ONNX
    Runtime's: serving runs one analysis process (or thread) per core, and OpenCV's own pool on top of that
    only adds synchronisation. Measured on 2 cores, 32-frame batches of the load test's 640x480 JPEGs:
    3.1-3.5 ms of CPU per frame with OpenCV's default (2 threads), 2.2-2.3 ms with one, same wall time.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        detector_path: str | Path | None = None,
        *,
        intra_op_threads: int = 1,
        max_faces: int = 5,
        min_face_px: int = 24,
        margin: float = 0.0,
        detection_max_side: int | None = 160,
        detection_retry_side: int | None = 320,
        decode_min_side: int | None = 320,
        refine_roll: bool = True,
        opencv_threads: int | None = 1,
        output: str | None = None,
    ) -> None:
        if opencv_threads is not None:
            cv2.setNumThreads(opencv_threads)
        self.model = EmotionModel(
            model_path or default_model_path(), intra_op_threads=intra_op_threads, output=output
        )
        if detector_path is None:
            detector_path = default_detector_path()
        elif str(detector_path).lower() == HAAR:
            detector_path = None
        options = (
            {"max_side": detection_max_side, "retry_max_side": detection_retry_side}
            if detector_path is not None
            else {}
        )
        self.detector: FaceDetector = create_detector(detector_path, **options)
        self.max_faces = max_faces
        self.min_face_px = min_face_px
        self.margin = margin
        self.decode_min_side = decode_min_side
        self.roll_refiner = RollRefiner() if refine_roll else None

    @property
    def model_version(self) -> str:
        """Recorded with every stored reading, so results stay attributable after a model update."""
        return self.model.version

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels of every reading's probabilities, in order (the model's, from its metadata)."""
        return self.model.labels

    @property
    def detector_name(self) -> str:
        return self.detector.name

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        """Faces worth classifying, largest first: at most `max_faces`, none smaller than `min_face_px`."""
        return self._select(self.detector.detect(image))

    def _select(self, detections: list[Detection]) -> list[Detection]:
        detections = [d for d in detections if min(d.box[2], d.box[3]) >= self.min_face_px]
        detections.sort(key=lambda d: d.box[2] * d.box[3], reverse=True)
        return detections[: self.max_faces]

    def _detect_frame(self, frame: _Frame) -> list[Detection]:
        """Faces of a (possibly reduced) frame, in full-frame pixels."""
        detections = self.detector.detect(frame.image)
        if frame.reduction > 1:
            detections = scale_detections(detections, frame.reduction, frame.width, frame.height)
        return self._select(detections)

    def _needs_full_resolution(self, frame: _Frame, detections: list[Detection]) -> bool:
        """True when a face crop taken from the reduced image would have to be upsampled for the model."""
        if frame.reduction == 1 or not detections or frame.blob is None:
            return False
        _, sides, _ = face_geometry(detections, self.detector, self.margin)
        return float(sides.min()) / frame.reduction < self.model.input_size

    def analyze_images(
        self, images: Sequence[np.ndarray | None], timings: StageTimings | None = None
    ) -> list[FrameReading]:
        """Readings for BGR (or grey/BGRA) uint8 frames, one per input, in order."""
        frames: list[_Frame | str] = []
        for image in images:
            frame = _as_bgr(image)
            frames.append(frame if isinstance(frame, str) else _Frame(frame, frame.shape[0], frame.shape[1]))
        return self._analyze(frames, timings)

    def analyze_jpegs(
        self, blobs: Sequence[bytes], timings: StageTimings | None = None
    ) -> list[FrameReading]:
        """Readings for encoded frames; one that does not decode gets `error`, the rest are analysed."""
        started = time.perf_counter()
        frames: list[_Frame | str] = [
            decode_frame(blob, self.decode_min_side) or "could not decode image" for blob in blobs
        ]
        if timings is not None:
            timings.decode += time.perf_counter() - started
        return self._analyze(frames, timings)

    def crop_jpegs(self, blobs: Sequence[bytes]) -> list[np.ndarray | None]:
        """The model-sized, aligned face crops of each encoded frame, largest face first ([faces, H, W] grey
        or [faces, H, W, 3]); None for a frame that could not be read. What `analyze_jpegs` classifies, for
        evaluating or selecting other models on the product's own crops."""
        frames = [decode_frame(blob, self.decode_min_side) or "could not decode image" for blob in blobs]
        located = self._locate(frames)
        crops, offset = [], 0
        for item in located.per_frame:
            if isinstance(item, str):
                crops.append(None)
                continue
            crops.append(located.crops[offset : offset + len(item)])
            offset += len(item)
        return crops

    def _locate(self, frames: Sequence[_Frame | str]) -> _LocatedFaces:
        """Detect and align the faces of a batch of frames (everything before the model call)."""
        clock = time.perf_counter
        size = self.model.input_size
        located = _LocatedFaces()
        crops: list[np.ndarray] = []
        frame_areas: list[np.ndarray] = []  # per face: its frame's pixel count (for face_fraction)
        rolls: list[np.ndarray] = []  # per face: the roll undone by alignment
        for frame in frames:
            if isinstance(frame, str):
                located.per_frame.append(frame)
                continue
            started = clock()
            try:
                detections = self._detect_frame(frame)
                detected = clock()
                if self._needs_full_resolution(frame, detections):
                    full = decode_jpeg(frame.blob)
                    if full is not None and full.shape[:2] == (frame.height, frame.width):
                        frame = _Frame(full, frame.height, frame.width)
                redecoded = clock()
                face_crops, face_rolls = self._aligned_crops(frame, detections)
            except cv2.error as error:  # one odd frame must not sink the whole batch
                located.per_frame.append(f"face detection failed: {error.err or error}")
                continue
            crops.append(face_crops)
            rolls.append(face_rolls)
            located.detect_s += detected - started
            located.decode_s += redecoded - detected
            located.align_s += clock() - redecoded
            located.per_frame.append(detections)
            frame_areas.append(np.full(len(detections), frame.height * frame.width, np.float32))
        located.crops = np.concatenate(crops) if crops else np.zeros((0, size, size), np.uint8)
        located.frame_areas = np.concatenate(frame_areas) if frame_areas else np.zeros(0, np.float32)
        located.rolls = np.concatenate(rolls) if rolls else np.zeros(0, np.float32)
        return located

    def _analyze(self, frames: Sequence[_Frame | str], timings: StageTimings | None) -> list[FrameReading]:
        clock = time.perf_counter
        located = self._locate(frames)
        per_frame = located.per_frame
        started = clock()
        # All faces of the batch in ONE model call: per-call overhead dominates at webcam batch sizes.
        probabilities = self.model.predict(located.crops)
        valences = self.model.valence(probabilities)
        classify_s = clock() - started
        started = clock()
        detections = [d for item in per_frame if not isinstance(item, str) for d in item]
        yaws, pitches = pose_angles(detections)
        attending = attending_faces(yaws, pitches)
        qualities = self._qualities(detections, located.crops, located.frame_areas, located.rolls, yaws)
        align_s = located.align_s + clock() - started  # quality signals are crop post-processing
        labels = self.model.labels
        readings: list[FrameReading] = []
        offset = 0
        for item in per_frame:
            if isinstance(item, str):
                readings.append(FrameReading(faces=[], error=item))
                continue
            faces = [
                FaceReading(
                    d.box,
                    d.score,
                    probabilities[offset + index],
                    labels=labels,
                    landmarks=d.landmarks,
                    quality=qualities[offset + index],
                    valence=None if valences is None else float(valences[offset + index]),
                    yaw=_optional(yaws[offset + index]),
                    pitch=_optional(pitches[offset + index]),
                    attending=_optional_flag(attending[offset + index]),
                )
                for index, d in enumerate(item)
            ]
            offset += len(item)
            readings.append(FrameReading(faces=faces))
        if timings is not None:
            timings.decode += located.decode_s
            timings.detect += located.detect_s
            timings.align += align_s
            timings.classify += classify_s
            timings.frames += len(frames)
            timings.faces += offset
        return readings

    def _aligned_crops(self, frame: _Frame, detections: list[Detection]) -> tuple[np.ndarray, np.ndarray]:
        """Model-sized crops of the faces of one frame, eyes levelled, and the roll angles undone."""
        size, channels = self.model.input_size, self.model.input_channels
        scale = 1.0 / frame.reduction
        angles = roll_angles(detections)

        grey = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)  # once per frame, not once per crop

        def crop(side: int, colours: int, margin: float, which: list[int] | None = None) -> np.ndarray:
            chosen = detections if which is None else [detections[i] for i in which]
            rolls = angles if which is None else angles[which]
            source = grey if colours == 1 else frame.image
            return crop_faces(
                source, chosen, self.detector, side, colours, margin, image_scale=scale, angles=rolls
            )

        if self.roll_refiner is None or not detections:
            return crop(size, channels, self.margin), angles
        # The refiner compares FER2013-framed 48 px grey crops with the FER2013 mean face; for such a
        # model (and no margin) the probes are the model's crops, re-cut only where the roll changes.
        reuse = (size, channels, self.margin) == (TEMPLATE_SIZE, 1, 0.0)
        probes = crop(TEMPLATE_SIZE, 1, 0.0)
        residuals = self.roll_refiner.residuals(probes)
        angles = angles + residuals
        if not reuse:
            return crop(size, channels, self.margin), angles
        changed = np.flatnonzero(residuals).tolist()
        if changed:
            probes[changed] = crop(size, channels, self.margin, changed)
        return probes, angles

    @staticmethod
    def _qualities(
        detections: list[Detection],
        crops: np.ndarray,
        frame_areas: np.ndarray,
        rolls: np.ndarray,
        yaws: np.ndarray,
    ) -> list[FaceQuality]:
        """Quality signals for every face of the batch, computed together (a face without landmarks counts
        as frontal: yaw 0)."""
        if not detections:
            return []
        boxes = np.array([d.box for d in detections], np.float32)
        return face_qualities(crop_statistics(crops), boxes, frame_areas, rolls, np.nan_to_num(yaws, nan=0.0))


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _optional_flag(value: float) -> bool | None:
    return None if np.isnan(value) else bool(value)


_pipelines: dict[int, Pipeline] = {}
_pipelines_lock = threading.Lock()


def get_pipeline() -> Pipeline:
    """This process's Pipeline, built on first use from the env defaults (thread-safe).

    Keyed by pid: a Celery prefork child must not reuse an ONNX Runtime session created before the fork.
    """
    pid = os.getpid()
    pipeline = _pipelines.get(pid)
    if pipeline is None:
        with _pipelines_lock:
            pipeline = _pipelines.get(pid)
            if pipeline is None:
                pipeline = _pipelines[pid] = Pipeline()
    return pipeline


def reset_pipeline() -> None:
    """Forget the cached Pipeline (tests, or after changing PORTAL_MODEL_PATH / PORTAL_FACE_DETECTOR)."""
    with _pipelines_lock:
        _pipelines.clear()
