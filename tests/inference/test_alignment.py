"""Face crops: model-sized, FER2013-framed, eyes levelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.align import crop_faces, crop_matrices, face_geometry
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
