"""The Pipeline: frames in, one reading per frame out, every face of a batch in one model call."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.pipeline import FaceReading, Pipeline, StageTimings, get_pipeline, reset_pipeline

from .conftest import (
    EIGHT_LABELS,
    FER2013_LABELS,
    FERPLUS_LABELS,
    SHUFFLED_LABELS,
    TWO_HEAD_DEFAULT_WEIGHTS,
    TWO_HEAD_SECOND_WEIGHTS,
)


@pytest.fixture(scope="module")
def pipeline(contract_model_path: Path, yunet_path: Path) -> Pipeline:
    return Pipeline(contract_model_path, yunet_path)


def encode(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def test_every_frame_gets_a_reading_with_its_face(pipeline: Pipeline, face_frames: list) -> None:
    readings = pipeline.analyze_images(face_frames)
    assert len(readings) == len(face_frames)
    for reading in readings:
        assert reading.error is None and len(reading.faces) == 1
        face = reading.primary_face
        assert isinstance(face.box[0], int) and len(face.box) == 4
        assert face.probabilities.shape == (7,)
        assert face.labels == pipeline.labels == tuple(SHUFFLED_LABELS)
        assert list(face.emotions) == SHUFFLED_LABELS  # the model's order, not re-ordered
        assert face.dominant == max(face.emotions, key=face.emotions.get)
        assert abs(sum(face.emotions.values()) - 1) < 1e-5


def test_a_frame_that_does_not_decode_is_an_error_not_an_exception(
    pipeline: Pipeline, face_frames: list
) -> None:
    blobs = [encode(face_frames[0]), b"not a jpeg", b"", encode(face_frames[1])]
    readings = pipeline.analyze_jpegs(blobs)
    assert [r.error is None for r in readings] == [True, False, False, True]
    assert "decode" in readings[1].error
    assert len(readings[0].faces) == len(readings[3].faces) == 1


def test_all_faces_of_a_batch_go_through_one_model_call(
    pipeline: Pipeline, face_frames: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_predict = pipeline.model.predict
    monkeypatch.setattr(
        pipeline.model, "predict", lambda crops: calls.append(len(crops)) or real_predict(crops)
    )
    pipeline.analyze_jpegs([encode(frame) for frame in face_frames])
    assert calls == [len(face_frames)]


def test_batched_readings_equal_single_frame_readings(pipeline: Pipeline, face_frames: list) -> None:
    batch = pipeline.analyze_images(face_frames[:4])
    for frame, reading in zip(face_frames[:4], batch, strict=True):
        single = pipeline.analyze_images([frame])[0]
        assert single.faces[0].box == reading.faces[0].box
        np.testing.assert_allclose(single.faces[0].probabilities, reading.faces[0].probabilities, atol=1e-6)


def test_frames_without_faces_and_odd_inputs(pipeline: Pipeline, face_frames: list) -> None:
    grey_face = cv2.cvtColor(face_frames[0], cv2.COLOR_BGR2GRAY)
    bgra_face = cv2.cvtColor(face_frames[0], cv2.COLOR_BGR2BGRA)
    blank = np.zeros((240, 320, 3), np.uint8)
    readings = pipeline.analyze_images([blank, grey_face, bgra_face, None, np.zeros((0, 0, 3), np.uint8)])
    assert readings[0].faces == [] and readings[0].error is None
    assert len(readings[1].faces) == 1 and len(readings[2].faces) == 1
    assert readings[3].error and readings[4].error
    assert pipeline.analyze_images([]) == []
    tiny_and_thin = pipeline.analyze_images(
        [np.zeros((1, 1, 3), np.uint8), np.zeros((5000, 10, 3), np.uint8)]
    )
    assert all(r.faces == [] and r.error is None for r in tiny_and_thin)


def test_stage_timings_are_accumulated(pipeline: Pipeline, face_frames: list) -> None:
    timings = StageTimings()
    pipeline.analyze_jpegs([encode(frame) for frame in face_frames[:3]], timings)
    assert timings.frames == 3 and timings.faces == 3
    assert all(seconds > 0 for seconds in timings.as_dict().values())


def test_haar_can_be_forced_and_model_version_is_exposed(
    contract_model_path: Path, face_frames: list
) -> None:
    pipeline = Pipeline(contract_model_path, "haar")
    assert pipeline.detector_name == "haar"
    assert pipeline.model_version == "contract-test-1"
    assert len(pipeline.analyze_images(face_frames[:1])[0].faces) == 1


def test_opencv_runs_one_thread_unless_told_otherwise(contract_model_path: Path, yunet_path: Path) -> None:
    # Parallelism comes from one analysis process per core; OpenCV's own pool only burnt CPU on top of it.
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        Pipeline(contract_model_path, yunet_path)
        assert cv2.getNumThreads() == 1
        cv2.setNumThreads(2)
        Pipeline(contract_model_path, yunet_path, opencv_threads=None)
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_face_reading_serialises_to_the_cli_shape() -> None:
    probabilities = np.array([0, 0, 0, 0.7, 0, 0.2, 0.1], np.float32)
    face = FaceReading((1, 2, 3, 4), 0.9, probabilities, labels=tuple(FER2013_LABELS))
    as_dict = face.to_dict()
    assert set(as_dict) == {"box", "score", "emotions", "dominant"}
    assert as_dict["box"] == [1, 2, 3, 4] and as_dict["dominant"] == "happy"
    assert list(as_dict["emotions"]) == FER2013_LABELS
    # The same numbers under another label order name other emotions: labels are the reading's own.
    shuffled = FaceReading((1, 2, 3, 4), 0.9, probabilities, labels=tuple(SHUFFLED_LABELS))
    assert shuffled.dominant == SHUFFLED_LABELS[3] == "angry"
    assert list(shuffled.emotions) == SHUFFLED_LABELS and shuffled.emotions["angry"] == pytest.approx(0.7)
    eight = FaceReading(
        (0, 0, 5, 5), 0.5, np.array([0.1] * 7 + [0.3], np.float32), labels=tuple(EIGHT_LABELS)
    )
    assert eight.dominant == "contempt" and list(eight.to_dict()["emotions"]) == EIGHT_LABELS


def test_an_eight_label_model_keeps_all_eight_labels_in_readings(
    eight_label_model_path: Path, yunet_path: Path, face_frames: list
) -> None:
    pipeline = Pipeline(eight_label_model_path, yunet_path)
    assert pipeline.labels == tuple(EIGHT_LABELS)
    dark = [(frame // 6).astype(np.uint8) for frame in face_frames[:2]]  # "contempt" wins on dark faces
    for reading in pipeline.analyze_jpegs([encode(frame) for frame in face_frames[:3] + dark]):
        face = reading.primary_face
        assert face.probabilities.shape == (8,) and face.labels == tuple(EIGHT_LABELS)
        assert list(face.emotions) == EIGHT_LABELS
        assert list(face.to_dict()["emotions"]) == EIGHT_LABELS
        assert face.dominant == max(face.emotions, key=face.emotions.get)
        assert abs(sum(face.emotions.values()) - 1) < 1e-5
        expected = face.emotions["happy"] - 0.6 * face.emotions["contempt"]
        assert face.valence == pytest.approx(expected, abs=1e-5)
    assert face.dominant == "contempt"  # the last (dark) face: the eighth class can win


def test_the_pipeline_reads_the_output_it_is_told_to(
    two_head_model_path: Path, yunet_path: Path, face_frames: list
) -> None:
    default = Pipeline(two_head_model_path, yunet_path)
    second = Pipeline(two_head_model_path, yunet_path, output="ferplus_probabilities")
    assert default.labels == tuple(SHUFFLED_LABELS) and second.labels == tuple(FERPLUS_LABELS)
    assert second.model.output_name == "ferplus_probabilities"
    frames = face_frames[:3]
    for before, after in zip(default.analyze_images(frames), second.analyze_images(frames), strict=True):
        a, b = before.primary_face, after.primary_face
        assert a.box == b.box  # detection does not depend on the output
        assert list(a.emotions) == SHUFFLED_LABELS and list(b.emotions) == FERPLUS_LABELS
        expected_a = sum(a.emotions[label] * w for label, w in TWO_HEAD_DEFAULT_WEIGHTS.items())
        expected_b = sum(b.emotions[label] * w for label, w in TWO_HEAD_SECOND_WEIGHTS.items())
        assert a.valence == pytest.approx(expected_a, abs=1e-5)
        assert b.valence == pytest.approx(expected_b, abs=1e-5)


def test_crop_jpegs_gives_the_crops_analyze_jpegs_classifies(pipeline: Pipeline, face_frames: list) -> None:
    size = pipeline.model.input_size
    two_faces = np.zeros((512, 768, 3), np.uint8)
    two_faces[:, :512] = face_frames[0]
    two_faces[128:384, 512:] = cv2.resize(face_frames[1], (256, 256))
    blobs = [
        encode(face_frames[0]),
        b"not a jpeg",
        encode(np.zeros((240, 320, 3), np.uint8)),  # decodes, no face
        b"",
        encode(two_faces),
    ]
    crops = pipeline.crop_jpegs(blobs)
    readings = pipeline.analyze_jpegs(blobs)
    assert len(crops) == len(blobs)
    assert crops[1] is None and crops[3] is None
    assert crops[0].shape == (1, size, size) and crops[0].dtype == np.uint8
    assert crops[2].shape == (0, size, size)
    assert crops[4].shape == (2, size, size)
    for faces, reading in zip(crops, readings, strict=True):
        if faces is None:
            assert reading.error is not None
            continue
        assert reading.error is None and len(faces) == len(reading.faces)
        # Same crops, same order (largest face first): the model reads them as the pipeline did.
        expected = np.array([face.probabilities for face in reading.faces]).reshape(
            len(faces), len(pipeline.labels)
        )
        np.testing.assert_allclose(pipeline.model.predict(faces), expected, atol=1e-6)
    assert [face.area for face in readings[4].faces] == sorted(
        (f.area for f in readings[4].faces), reverse=True
    )
    assert pipeline.crop_jpegs([]) == []


def test_crop_jpegs_of_a_colour_model_are_colour(tmp_path: Path, yunet_path: Path, face_frames: list) -> None:
    from .conftest import build_contract_model

    path = build_contract_model(tmp_path / "rgb64.onnx", FER2013_LABELS, [1.0] * 7, [0.0] * 7, 64, channels=3)
    crops = Pipeline(path, yunet_path).crop_jpegs([encode(face_frames[0]), b"\xff\xd8 truncated"])
    assert crops[0].shape == (1, 64, 64, 3) and crops[1] is None


def test_get_pipeline_is_one_per_process_and_thread_safe(
    contract_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_MODEL_PATH", str(contract_model_path))
    reset_pipeline()
    try:
        seen: list[Pipeline] = []
        threads = [threading.Thread(target=lambda: seen.append(get_pipeline())) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 4 and all(p is seen[0] for p in seen)
        assert get_pipeline() is seen[0]
        assert seen[0].model_version == "contract-test-1"
    finally:
        reset_pipeline()


def test_shipped_model_reads_the_real_face_video(
    real_model_path: Path, yunet_path: Path, face_frames: list
) -> None:
    pipeline = Pipeline(real_model_path, yunet_path)
    readings = pipeline.analyze_jpegs([encode(frame) for frame in face_frames])
    assert all(len(r.faces) == 1 for r in readings)
    assert pipeline.model_version
    # The clip goes neutral -> frown -> a wide-eyed surprise at the end (a sanity check, not a benchmark).
    assert readings[0].primary_face.dominant != "surprise"
    assert readings[-1].primary_face.dominant == "surprise"
    assert readings[-1].primary_face.valence is not None  # the shipped model defines valence weights
