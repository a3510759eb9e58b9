"""Face detection on real frames with YuNet and with the Haar fallback, and detector resolution."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference import resources
from inference.detect import HaarDetector, YuNetDetector, create_detector


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax1, bx1) - max(a[0], b[0])) * max(0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_yunet_finds_the_face_with_landmarks_in_every_frame(yunet_path: Path, face_frames: list) -> None:
    detector = YuNetDetector(yunet_path)
    for frame in face_frames:
        faces = detector.detect(frame)
        assert len(faces) == 1
        x, y, w, h = faces[0].box
        assert faces[0].score > 0.8
        assert w > 150 and h > 150  # the face fills most of the 512x512 frame
        assert 0 <= x and 0 <= y and x + w <= frame.shape[1] and y + h <= frame.shape[0]
        right_eye, left_eye = faces[0].landmarks[0], faces[0].landmarks[1]
        assert x < right_eye[0] < left_eye[0] < x + w  # the person's right eye is on the image left


def test_haar_fallback_finds_the_same_face(yunet_path: Path, face_frames: list) -> None:
    yunet, haar = YuNetDetector(yunet_path), HaarDetector()
    for frame in face_frames:
        haar_faces = haar.detect(frame)
        assert len(haar_faces) == 1
        assert haar_faces[0].landmarks is None and 0.0 < haar_faces[0].score <= 1.0
        assert iou(haar_faces[0].box, yunet.detect(frame)[0].box) > 0.4


def test_yunet_downscaled_detection_matches_full_resolution(yunet_path: Path, face_frames: list) -> None:
    full, fast = YuNetDetector(yunet_path, max_side=None), YuNetDetector(yunet_path, max_side=256)
    for frame in face_frames[:3]:
        assert iou(full.detect(frame)[0].box, fast.detect(frame)[0].box) > 0.8


def test_no_face_in_a_blank_frame(yunet_path: Path) -> None:
    blank = np.full((240, 320, 3), 127, np.uint8)
    assert YuNetDetector(yunet_path).detect(blank) == []
    assert HaarDetector().detect(blank) == []


def test_one_detector_serves_several_threads(yunet_path: Path, face_frames: list) -> None:
    detector = YuNetDetector(yunet_path)
    expected = [detector.detect(frame)[0].box for frame in face_frames[:4]]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        results[worker] = [detector.detect(frame)[0].box for frame in face_frames[:4]]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(boxes == expected for boxes in results.values())


def test_create_detector_without_a_path_is_haar() -> None:
    assert create_detector(None).name == "haar"
    with pytest.raises(FileNotFoundError):
        create_detector("does-not-exist.onnx")


def test_default_detector_path_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORTAL_SHARED_DIR", str(tmp_path / "empty-shared"))
    monkeypatch.setattr(resources, "fetched_detector_path", lambda: tmp_path / "var" / "yunet.onnx")
    monkeypatch.delenv("PORTAL_FACE_DETECTOR", raising=False)
    assert resources.default_detector_path() is None  # nothing anywhere: Haar

    fetched = tmp_path / "var" / "yunet.onnx"
    fetched.parent.mkdir()
    fetched.write_bytes(b"x")
    assert resources.default_detector_path() == fetched

    shared_copy = tmp_path / "empty-shared" / "models" / resources.YUNET_FILENAME
    shared_copy.parent.mkdir(parents=True)
    shared_copy.write_bytes(b"x")
    assert resources.default_detector_path() == shared_copy

    monkeypatch.setenv("PORTAL_FACE_DETECTOR", str(tmp_path / "mine.onnx"))
    assert resources.default_detector_path() == tmp_path / "mine.onnx"
    monkeypatch.setenv("PORTAL_FACE_DETECTOR", "haar")
    assert resources.default_detector_path() is None


def test_relative_env_paths_are_relative_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_SHARED_DIR", "../shared")
    assert resources.shared_dir() == (resources.REPO_ROOT / ".." / "shared").resolve()
    monkeypatch.setenv("PORTAL_MODEL_PATH", "var/m.onnx")
    assert resources.default_model_path() == resources.REPO_ROOT / "var" / "m.onnx"


def test_a_small_face_missed_by_the_fast_pass_is_found_by_the_retry(
    yunet_path: Path, face_frames: list
) -> None:
    """The 160 px first pass misses a ~20 px face in a 320x240 frame; the 320 px retry finds it."""
    frame = face_frames[0]
    canvas = np.full((240, 320, 3), frame[5, 5], np.uint8)
    canvas[100:132, 150:182] = cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA)
    assert YuNetDetector(yunet_path, max_side=160, retry_max_side=None).detect(canvas) == []
    found = YuNetDetector(yunet_path, max_side=160, retry_max_side=320).detect(canvas)
    assert len(found) == 1 and 150 <= found[0].box[0] + found[0].box[2] / 2 <= 182


def test_the_retry_runs_only_when_the_fast_pass_finds_nothing(
    yunet_path: Path, face_frames: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = YuNetDetector(yunet_path, max_side=160, retry_max_side=320)
    scales: list[float] = []
    real = detector._detect_at
    monkeypatch.setattr(
        detector, "_detect_at", lambda image, scale: scales.append(scale) or real(image, scale)
    )
    frame = cv2.resize(face_frames[0], (320, 240))
    assert len(detector.detect(frame)) == 1 and scales == [0.5]
    scales.clear()
    assert detector.detect(np.full((240, 320, 3), 127, np.uint8)) == [] and scales == [0.5, 1.0]
