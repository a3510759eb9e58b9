"""The fast path of `analyze_jpegs`: reduced-scale JPEG decode, a small first detection pass with a retry,
and the guarantee that it still finds the face in every frame of the real clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.pipeline import Pipeline, decode_frame, jpeg_size

from .test_face_detection import iou


def encode(frame: np.ndarray, quality: int = 80) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def read_all(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def e2e_style(frame: np.ndarray) -> np.ndarray:
    """What tests/conftest.py's face_jpegs (and the browser) send: 320x240 with the face in the middle."""
    canvas = cv2.resize(frame, (240, 240))
    return cv2.copyMakeBorder(canvas, 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(40, 40, 40))


@pytest.fixture(scope="module")
def pipeline(contract_model_path: Path, yunet_path: Path) -> Pipeline:
    return Pipeline(contract_model_path, yunet_path)  # the production defaults


def test_jpeg_size_reads_the_header() -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    assert jpeg_size(encode(image)) == (53, 37)
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert jpeg_size(progressive) == (53, 37)
    assert jpeg_size(cv2.imencode(".png", image)[1].tobytes()) is None
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"not a jpeg", encode(image)[:20]):
        assert jpeg_size(junk) is None


def test_decode_frame_reduces_only_while_the_long_side_stays_large_enough() -> None:
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    blob = encode(image)
    assert decode_frame(blob, None).reduction == 1
    half = decode_frame(blob, 320)
    assert (
        half.reduction == 2 and half.image.shape == (240, 320, 3) and (half.height, half.width) == (480, 640)
    )
    assert decode_frame(blob, 100).reduction == 4
    assert decode_frame(blob, 641).reduction == 1
    odd = decode_frame(encode(image[:479, :639]), 159)  # sizes that do not divide: rounded up
    assert odd.image.shape == (120, 160, 3) and (odd.height, odd.width) == (479, 639)
    png = decode_frame(cv2.imencode(".png", image)[1].tobytes(), 160)  # not a JPEG: full decode
    assert png.reduction == 1 and png.image.shape == (480, 640, 3)
    assert decode_frame(b"", 320) is None and decode_frame(b"\xff\xd8garbage", 320) is None


def test_reduced_decode_gives_the_same_readings_in_full_frame_pixels(
    contract_model_path: Path, yunet_path: Path, face_frames: list
) -> None:
    blobs = [encode(cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA)) for frame in face_frames]
    fast = Pipeline(contract_model_path, yunet_path, decode_min_side=320).analyze_jpegs(blobs)
    full = Pipeline(contract_model_path, yunet_path, decode_min_side=None).analyze_jpegs(blobs)
    for a, b in zip(fast, full, strict=True):
        fa, fb = a.primary_face, b.primary_face
        assert iou(fa.box, fb.box) > 0.9  # boxes in 640x480 pixels, not 320x240
        assert np.abs(fa.landmarks - fb.landmarks).max() <= 0.03 * fb.box[2]
        np.testing.assert_allclose(fa.probabilities, fb.probabilities, atol=0.02)
        assert fa.quality.face_fraction == pytest.approx(fb.quality.face_fraction, rel=0.05)
        assert fa.quality.score == pytest.approx(fb.quality.score, abs=0.1)


def test_a_small_face_is_cropped_from_the_full_resolution_frame(
    contract_model_path: Path, yunet_path: Path, face_frames: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At half scale its crop would have fewer pixels than the model input: the frame is decoded again."""
    frame = face_frames[0]
    canvas = np.full((480, 640, 3), frame[5, 5], np.uint8)
    canvas[150:230, 300:380] = cv2.resize(frame, (80, 80), interpolation=cv2.INTER_AREA)  # face ~50 px
    blob = encode(canvas)
    fast = Pipeline(contract_model_path, yunet_path, decode_min_side=320)
    full = Pipeline(contract_model_path, yunet_path, decode_min_side=None)
    from inference import pipeline as module

    decodes = []
    real_decode = module.decode_jpeg
    monkeypatch.setattr(module, "decode_jpeg", lambda data: decodes.append(len(data)) or real_decode(data))
    face = fast.analyze_jpegs([blob])[0].primary_face
    assert decodes == [len(blob)]  # the full-size decode happened, once
    assert face is not None and face.quality.face_px < 96
    reference = full.analyze_jpegs([blob])[0].primary_face
    np.testing.assert_allclose(face.probabilities, reference.probabilities, atol=0.02)


@pytest.mark.parametrize("variant", ["clip_512", "e2e_320x240", "mjpeg_640x480"])
def test_a_face_is_found_in_every_frame_of_the_real_clips(
    pipeline: Pipeline, face_video_path: Path, shared: Path, variant: str
) -> None:
    if variant == "mjpeg_640x480":
        frames = read_all(shared / "media" / "liveportrait_d3_640x480_15fps_8s.mjpeg")
    else:
        frames = read_all(face_video_path)
        if variant == "e2e_320x240":
            frames = [e2e_style(frame) for frame in frames]
    assert len(frames) > 100
    readings = []
    for start in range(0, len(frames), 32):  # the worker's batch size
        readings += pipeline.analyze_jpegs([encode(frame) for frame in frames[start : start + 32]])
    missed = [index for index, reading in enumerate(readings) if reading.primary_face is None]
    assert missed == [], f"{variant}: no face in frames {missed}"
    assert all(reading.error is None for reading in readings)
