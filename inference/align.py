"""Face alignment: one square crop per detected face, framed like FER2013, eyes levelled when known.

The geometry (affine matrices) is computed for all faces at once with numpy; the pixel work is one
cv2.warpAffine per face (C++), then one area-resize to the model's input size (area interpolation avoids
the aliasing a direct 250 px -> 48 px bilinear warp would introduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from inference.detect import Detection, FaceDetector


def face_geometry(
    detections: Sequence[Detection], detector: FaceDetector, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop centres [N, 2], sides [N] and roll angles [N] (degrees) for the detections of one frame.

    `margin` widens the crop beyond FER2013's framing (0.1 = 10 % larger side).
    """
    count = len(detections)
    if count == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    boxes = np.array([d.box for d in detections], dtype=np.float32)
    sides = (boxes[:, 2] * detector.crop_scale_w + boxes[:, 3] * detector.crop_scale_h) / 2
    sides *= 1.0 + margin
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    centres[:, 1] -= detector.crop_shift_y * sides
    return centres, sides.astype(np.float32), roll_angles(detections)


def roll_angles(detections: Sequence[Detection]) -> np.ndarray:
    """Head roll in degrees per detection (the eye line's angle; 0 where there are no landmarks)."""
    angles = np.zeros(len(detections), np.float32)
    with_landmarks = [i for i, d in enumerate(detections) if d.landmarks is not None]
    if with_landmarks:
        points = np.stack([detections[i].landmarks for i in with_landmarks])  # [M, 5, 2]
        eye_vector = points[:, 1] - points[:, 0]  # image-left eye -> image-right eye
        angles[with_landmarks] = np.degrees(np.arctan2(eye_vector[:, 1], eye_vector[:, 0]))
    return angles


# Depth of the nose tip in front of the eyes, relative to the eye distance, in a generic head model
# (x_nose - x_eyes_mid = ratio * eye_distance * tan(yaw)); 0.5 reads the most turned frame of the shared
# LivePortrait clip (visibly ~20-25 degrees) as 24 degrees. Rough, but good enough to flag turned faces.
NOSE_DEPTH_RATIO = 0.5


def yaw_angles(detections: Sequence[Detection]) -> np.ndarray:
    """Rough head yaw in degrees per detection from YuNet's landmarks (0 where there are none).

    The nose tip's offset from the eye midpoint along the eye line (so roll does not count), divided by the
    eye distance, is `NOSE_DEPTH_RATIO * tan(yaw)`. Positive: the nose points towards image right.
    """
    angles = np.zeros(len(detections), np.float32)
    with_landmarks = [i for i, d in enumerate(detections) if d.landmarks is not None]
    if with_landmarks:
        points = np.stack([detections[i].landmarks for i in with_landmarks]).astype(np.float64)  # [M, 5, 2]
        eye_vector = points[:, 1] - points[:, 0]
        eye_distance = np.maximum(np.linalg.norm(eye_vector, axis=1), 1e-6)
        direction = eye_vector / eye_distance[:, None]
        offset = ((points[:, 2] - (points[:, 0] + points[:, 1]) / 2) * direction).sum(axis=1) / eye_distance
        angles[with_landmarks] = np.degrees(np.arctan(offset / NOSE_DEPTH_RATIO))
    return angles


def crop_matrices(centres: np.ndarray, sides: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """[N, 2, 3] affine matrices mapping the frame onto `sides`-pixel crops, rotated by `angles`."""
    radians = np.radians(angles)
    cos, sin = np.cos(radians), np.sin(radians)
    # Rotation by -angle about the crop centre, then move the centre to (side/2, side/2); the same as
    # cv2.getRotationMatrix2D(centre, angle, 1) plus a translation, for all faces at once.
    matrices = np.empty((len(sides), 2, 3), np.float64)
    matrices[:, 0, 0] = cos
    matrices[:, 0, 1] = sin
    matrices[:, 1, 0] = -sin
    matrices[:, 1, 1] = cos
    half = sides / 2.0
    matrices[:, 0, 2] = half - (cos * centres[:, 0] + sin * centres[:, 1])
    matrices[:, 1, 2] = half - (-sin * centres[:, 0] + cos * centres[:, 1])
    return matrices


def crop_faces(
    image: np.ndarray,
    detections: Sequence[Detection],
    detector: FaceDetector,
    size: int,
    channels: int = 1,
    margin: float = 0.0,
    image_scale: float = 1.0,
) -> np.ndarray:
    """uint8 crops [N, size, size] (channels 1) or [N, size, size, 3] (BGR) of the faces in `image`.

    `image_scale`: `image` is the frame the detections refer to, resized by this factor (0.5 when a JPEG was
    decoded at half size); the crops frame the same face regions.

    Pixels outside the frame are filled by replicating the border, as FER2013's own crops near the edge
    look more like a smeared edge than a black bar.
    """
    shape = (len(detections), size, size) if channels == 1 else (len(detections), size, size, 3)
    crops = np.empty(shape, np.uint8)
    if not detections:
        return crops
    source = image
    if channels == 1 and image.ndim == 3:
        source = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 3 and image.ndim == 2:
        source = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    centres, sides, angles = face_geometry(detections, detector, margin)
    centres, sides = centres * np.float32(image_scale), sides * np.float32(image_scale)
    matrices = crop_matrices(centres, sides, angles)
    for index, (matrix, side) in enumerate(zip(matrices, sides, strict=True)):
        side_px = max(int(round(float(side))), 1)
        face = cv2.warpAffine(
            source, matrix, (side_px, side_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        interpolation = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
        crops[index] = cv2.resize(face, (size, size), interpolation=interpolation)
    return crops
