"""Face crops: model-sized, FER2013-framed, eyes levelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.align import crop_faces, crop_matrices, face_geometry, roll_angles
from inference.detect import Detection, HaarDetector, YuNetDetector


def test_crops_have_the_model_input_shape(yunet_path: Path, face_frames: list) -> None:
    detector = YuNetDetector(yunet_path)
    frame = face_frames[0]
    detections = detector.detect(frame)
    grey = crop_faces(frame, detections, detector, size=48, channels=1)
    colour = crop_faces(frame, detections, detector, size=64, channels=3)
    assert grey.shape == (1, 48, 48) and grey.dtype == np.uint8
    assert colour.shape == (1, 64, 64, 3)
    assert crop_faces(frame, [], detector, size=48).shape == (0, 48, 48)


def test_alignment_levels_the_eyes(yunet_path: Path, face_frames: list) -> None:
    detector = YuNetDetector(yunet_path)
    detection = detector.detect(face_frames[0])[0]
    tilted = Detection(
        detection.box,
        detection.score,
        landmarks=np.array([[100, 100], [160, 130], [130, 150], [0, 0], [0, 0]]),
    )
    centres, sides, angles = face_geometry([tilted], detector)
    matrix = crop_matrices(centres, sides, angles)[0]
    eyes = np.c_[tilted.landmarks[:2], np.ones(2)] @ matrix.T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-3  # same height after the warp
    assert eyes[0, 0] < eyes[1, 0]  # and not flipped
    centre_in_crop = np.r_[centres[0], 1.0] @ matrix.T
    np.testing.assert_allclose(centre_in_crop, [sides[0] / 2, sides[0] / 2], atol=1e-4)


def test_rotated_face_gives_nearly_the_same_crop(yunet_path: Path, face_frames: list) -> None:
    import cv2

    detector = YuNetDetector(yunet_path, max_side=None)
    frame = face_frames[0]
    upright = crop_faces(frame, detector.detect(frame), detector, size=48)[0].astype(np.float32)
    rotation = cv2.getRotationMatrix2D((frame.shape[1] / 2, frame.shape[0] / 2), 15, 1.0)
    rotated_frame = cv2.warpAffine(frame, rotation, frame.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    realigned = crop_faces(rotated_frame, detector.detect(rotated_frame), detector, size=48)[0].astype(
        np.float32
    )
    unaligned = crop_faces(
        rotated_frame,
        [Detection(d.box, d.score) for d in detector.detect(rotated_frame)],
        detector,
        size=48,
    )[0].astype(np.float32)
    # Levelling the eyes undoes most of the roll: the aligned crop is much closer to the upright one.
    assert np.abs(realigned - upright).mean() < 0.6 * np.abs(unaligned - upright).mean()


def test_haar_crop_is_framed_like_fer2013() -> None:
    detector = HaarDetector()
    frame = np.zeros((200, 200), np.uint8)
    frame[50:150, 50:150] = 255  # a 100-px "face" box
    crop = crop_faces(frame, [Detection((50, 50, 100, 100), 1.0)], detector, size=48)[0]
    # Haar boxes cover ~98 % of a FER2013 image: the box fills nearly the whole crop.
    assert crop[2:-2, 2:-2].min() > 200


# --- eyes levelled in production: the landmarks' prior refined by RollRefiner ------------------------------


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image rotated counter-clockwise on screen about its centre (its eye line goes to -degrees)."""
    import cv2

    matrix = cv2.getRotationMatrix2D(((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def e2e_jpeg(frame: np.ndarray, degrees: float = 0.0) -> bytes:
    """A 320x240 webcam-like JPEG (as the browser sends) of the frame's face, rolled by `degrees`."""
    import cv2

    canvas = cv2.copyMakeBorder(
        cv2.resize(frame, (240, 240)), 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(40,) * 3
    )
    return cv2.imencode(".jpg", rotate(canvas, degrees), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def test_the_mean_face_template_is_fer2013s(fer2013: dict) -> None:
    from inference.mean_face import build_mean_face, mean_face

    template = mean_face()
    assert template.shape == (48, 48) and np.array_equal(template, template[:, ::-1])  # exactly symmetric
    assert np.array_equal(build_mean_face(fer2013["images"][fer2013["usage"] == "Training"]), template)


def test_roll_refiner_measures_the_rotation_of_a_real_face_crop(yunet_path: Path, face_frames: list) -> None:
    from inference.align import RollRefiner

    refiner = RollRefiner()
    detector = YuNetDetector(yunet_path, max_side=None)
    for frame in face_frames[::2]:
        crop = crop_faces(frame, detector.detect(frame)[:1], detector, size=48)[0]
        upright, score = refiner.residual(crop)
        assert score > RollRefiner.MIN_SCORE
        for degrees in (-30, -12, 12, 30):
            measured, _ = refiner.residual(rotate(crop, degrees))
            assert abs(measured - upright + degrees) < 4, (degrees, measured, upright)


def test_roll_refiner_leaves_what_is_not_a_face_alone() -> None:
    from inference.align import RollRefiner

    refiner = RollRefiner()
    noise = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    assert all(refiner.residual(crop)[1] < RollRefiner.MIN_SCORE for crop in noise)
    assert refiner.refine(noise, np.array([1.0, 2.0, 3.0, 4.0])).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert refiner.residual(np.full((48, 48), 128, np.uint8)) == (0.0, 0.0)


@pytest.mark.parametrize("degrees", [-30, -15, 15, 30])
def test_a_rolled_webcam_frame_is_levelled_by_the_pipeline(
    contract_model_path: Path, yunet_path: Path, face_frames: list, degrees: int
) -> None:
    """Production settings (160 px detection, half-size decode): the roll is measured and undone, and the crop
    the model sees has level eyes (checked by YuNet at full resolution on a large version of that crop)."""
    import cv2

    from inference.pipeline import Pipeline

    pipeline = Pipeline(contract_model_path, yunet_path)
    checker = YuNetDetector(yunet_path, max_side=None)
    errors, residual_tilts = [], []
    for frame in face_frames:
        blob = e2e_jpeg(frame, degrees)
        face = pipeline.analyze_jpegs([blob])[0].primary_face
        errors.append(face.quality.roll_degrees + degrees)  # the eye line of the rolled face is at -degrees
        image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        detection = Detection(face.box, face.score, face.landmarks)
        large = crop_faces(image, [detection], checker, 240, 3, angles=np.array([face.quality.roll_degrees]))[
            0
        ]
        found = checker.detect(large)
        assert found, "the levelled crop must still show a face"
        residual_tilts.append(float(roll_angles(found[:1])[0]))
    errors, residual_tilts = np.abs(errors), np.abs(residual_tilts)
    assert errors.mean() < 5 and np.mean(errors < 8) >= 0.75, errors.round(1)
    assert residual_tilts.mean() < 5, residual_tilts.round(1)


def test_rolled_frames_read_like_upright_ones(
    real_model_path: Path, yunet_path: Path, face_frames: list
) -> None:
    """With the shipped model: the readings of frames rolled 20-30 degrees stay close to the upright ones, and
    much closer than with the landmarks' roll alone."""
    from inference.pipeline import Pipeline

    levelled = Pipeline(real_model_path, yunet_path)
    landmarks_only = Pipeline(real_model_path, yunet_path, refine_roll=False)
    upright = levelled.analyze_jpegs([e2e_jpeg(frame) for frame in face_frames])
    distances: dict[str, list[float]] = {"levelled": [], "landmarks_only": []}
    agree = []
    for degrees in (-30, -20, 20, 30):
        rolled = [e2e_jpeg(frame, degrees) for frame in face_frames]
        for name, pipeline in (("levelled", levelled), ("landmarks_only", landmarks_only)):
            for before, after in zip(upright, pipeline.analyze_jpegs(rolled), strict=True):
                p, q = before.primary_face.probabilities, after.primary_face.probabilities
                distances[name].append(float(np.abs(p - q).sum()))
                if name == "levelled" and p.max() > 0.6:  # a confident upright reading
                    agree.append(before.primary_face.dominant == after.primary_face.dominant)
    assert np.mean(distances["levelled"]) < 0.7 * np.mean(distances["landmarks_only"]), distances
    assert agree and np.mean(agree) >= 0.9
