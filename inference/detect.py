"""Face detection: YuNet (cv2.FaceDetectorYN) when its ONNX file is available, else OpenCV's Haar cascade.

Both detectors are safe to share between threads: OpenCV detector objects are stateful (YuNet's input size,
internal buffers), so each thread lazily gets its own instance.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from inference.resources import YUNET_SHA256, YUNET_URL, fetched_detector_path


@dataclass(frozen=True)
class Detection:
    """One face in one frame, in the frame's pixel coordinates."""

    box: tuple[int, int, int, int]  # x, y, w, h (clipped to the frame)
    score: float
    # YuNet's 5 points as [5, 2] float32: right eye, left eye, nose tip, right and left mouth corner
    # (the person's right/left, i.e. image left/right). None for Haar.
    landmarks: np.ndarray | None = None


def scale_detections(detections: list[Detection], factor: float, width: int, height: int) -> list[Detection]:
    """Detections found on a downscaled image, in the pixels of the `width` x `height` original."""
    if not detections:
        return []
    boxes = _clip_boxes(np.array([d.box for d in detections], np.float32) * factor, width, height)
    return [
        Detection(
            box=tuple(int(v) for v in box),
            score=d.score,
            landmarks=None if d.landmarks is None else d.landmarks * np.float32(factor),
        )
        for box, d in zip(boxes, detections, strict=True)
        if box[2] > 0 and box[3] > 0
    ]


class FaceDetector(Protocol):
    name: str
    # How a FER2013-like square crop relates to this detector's boxes (see inference.align):
    # side = (w * crop_scale_w + h * crop_scale_h) / 2, centred crop_shift_y * side above the box centre.
    crop_scale_w: float
    crop_scale_h: float
    crop_shift_y: float

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def _clip_boxes(xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip [N, 4] float x, y, w, h boxes to the frame; returns int32 boxes (w, h may become 0)."""
    x0 = np.clip(xywh[:, 0], 0, width)
    y0 = np.clip(xywh[:, 1], 0, height)
    x1 = np.clip(xywh[:, 0] + xywh[:, 2], 0, width)
    y1 = np.clip(xywh[:, 1] + xywh[:, 3], 0, height)
    return np.rint(np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)).astype(np.int32)


class YuNetDetector:
    """cv2.FaceDetectorYN on a downscaled frame, with one retry at a larger size when nothing was found.

    Detection cost grows with the pixel count, and a participant's face fills much of a webcam frame: a
    160-px-wide pass finds faces down to ~30 px (in a 320x240 frame) at ~1/4 of the cost of a 320-px pass
    (~1.1 ms vs ~3.9 ms on one core). Frames where it finds nothing (no one there, or a small face) are
    searched again at `retry_max_side`, so nothing is lost against a single pass at that size.
    """

    name = "yunet"
    # Measured on FER2013 (YuNet on upscaled images): the box is 0.83 x 1.03 of the image side and its
    # centre sits 0.016 of the side below the image centre.
    crop_scale_w = 1 / 0.827
    crop_scale_h = 1 / 1.031
    crop_shift_y = 0.016

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        max_side: int | None = 160,
        retry_max_side: int | None = 320,
    ) -> None:
        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"YuNet face detector not found: {self.model_path}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.max_side = max_side
        self.retry_max_side = retry_max_side
        self._local = threading.local()
        self._instance()  # fail at construction, not on the first frame, if the file is not a YuNet model

    def _instance(self) -> cv2.FaceDetectorYN:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = cv2.FaceDetectorYN.create(
                self.model_path, "", (320, 320), self.score_threshold, self.nms_threshold, self.top_k
            )
            self._local.detector = detector
            self._local.size = (320, 320)
        return detector

    @staticmethod
    def _scale(image: np.ndarray, max_side: int | None) -> float:
        longest = max(image.shape[:2])
        return max_side / longest if max_side and longest > max_side else 1.0

    def detect(self, image: np.ndarray) -> list[Detection]:
        scale = self._scale(image, self.max_side)
        detections = self._detect_at(image, scale)
        if not detections and self.retry_max_side:
            retry_scale = self._scale(image, self.retry_max_side)
            if retry_scale > scale:
                detections = self._detect_at(image, retry_scale)
        return detections

    def _detect_at(self, image: np.ndarray, scale: float) -> list[Detection]:
        height, width = image.shape[:2]
        if scale != 1.0:
            image = cv2.resize(
                image,
                (max(round(width * scale), 1), max(round(height * scale), 1)),
                interpolation=cv2.INTER_AREA,
            )
        detector = self._instance()
        size = (image.shape[1], image.shape[0])
        if self._local.size != size:
            detector.setInputSize(size)
            self._local.size = size
        _, faces = detector.detect(image)
        if faces is None or len(faces) == 0:
            return []
        faces = np.array(faces, dtype=np.float32)
        faces = faces[np.isfinite(faces).all(axis=1)]  # degenerate inputs (a few pixels) can yield NaN rows
        faces[:, :14] /= scale  # boxes and landmarks back to full-frame pixels
        boxes = _clip_boxes(faces[:, :4], width, height)
        landmarks = faces[:, 4:14].reshape(-1, 5, 2)
        scores = faces[:, 14]
        return [
            Detection(box=tuple(int(v) for v in box), score=float(score), landmarks=points)
            for box, score, points in zip(boxes, scores, landmarks, strict=True)
            if box[2] > 0 and box[3] > 0
        ]


class HaarDetector:
    """OpenCV's bundled frontal-face Haar cascade: no file to ship, weaker than YuNet, no landmarks."""

    name = "haar"
    # Measured on FER2013: the Haar box is 0.98 of the image side, centred.
    crop_scale_w = 1 / 0.983
    crop_scale_h = 1 / 0.983
    crop_shift_y = 0.0

    def __init__(self, min_face_fraction: float = 0.12, cascade: str = "haarcascade_frontalface_default.xml"):
        self.cascade_path = os.path.join(cv2.data.haarcascades, cascade)
        self.min_face_fraction = min_face_fraction
        self._local = threading.local()
        if self._instance().empty():
            raise FileNotFoundError(f"Haar cascade not loadable: {self.cascade_path}")

    def _instance(self) -> cv2.CascadeClassifier:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = cv2.CascadeClassifier(self.cascade_path)
        return cascade

    def detect(self, image: np.ndarray) -> list[Detection]:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)
        height, width = grey.shape
        min_side = max(24, int(min(height, width) * self.min_face_fraction))
        # detectMultiScale3 also returns the final stage's weights: a rough confidence, squashed to 0..1.
        boxes, _, weights = self._instance().detectMultiScale3(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True
        )
        if len(boxes) == 0:
            return []
        boxes = _clip_boxes(np.asarray(boxes, dtype=np.float32), width, height)
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, dtype=np.float64).reshape(-1)))
        return [
            Detection(box=tuple(int(v) for v in box), score=float(score))
            for box, score in zip(boxes, scores, strict=True)
            if box[2] > 0 and box[3] > 0
        ]


def create_detector(model_path: str | Path | None, **options: object) -> FaceDetector:
    """YuNet from `model_path`, or Haar when `model_path` is None. Options go to the detector class."""
    if model_path is None:
        return HaarDetector(**options)  # type: ignore[arg-type]
    return YuNetDetector(model_path, **options)  # type: ignore[arg-type]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_detector(
    url: str = YUNET_URL,
    destination: str | Path | None = None,
    sha256: str = YUNET_SHA256,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Download YuNet into `var/models/` and verify its checksum; returns the path, or None on any failure.

    Never raises: a deployment without internet simply keeps using the Haar cascade.
    """
    target = Path(destination) if destination else fetched_detector_path()
    try:
        if target.is_file() and file_sha256(target) == sha256:
            log(f"YuNet face detector already present and verified: {target}")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log(f"Downloading YuNet face detector from {url}")
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (fixed https URL)
            payload = response.read()
        digest = hashlib.sha256(payload).hexdigest()
        if digest != sha256:
            raise ValueError(f"checksum mismatch: got {digest}, expected {sha256}")
        # Write then rename so a half-written file is never picked up as the detector.
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as handle:
            handle.write(payload)
        os.replace(handle.name, target)
        log(f"YuNet face detector saved to {target} (sha256 verified)")
        return target
    except Exception as error:  # noqa: BLE001 (any failure means "use Haar", by design)
        log(
            f"Could not fetch the YuNet face detector ({type(error).__name__}: {error}). "
            "Face detection will use OpenCV's Haar cascade instead; set PORTAL_FACE_DETECTOR or "
            "PORTAL_SHARED_DIR to a YuNet ONNX file, or rerun `python -m inference fetch-detector` online."
        )
        return None
