"""Face alignment: one square crop per detected face, framed like FER2013, eyes levelled when known.

The geometry (affine matrices) is computed for all faces at once with numpy; the pixel work is one
cv2.warpAffine per face (C++), then one area-resize to the model's input size (area interpolation avoids
the aliasing a direct 250 px -> 48 px bilinear warp would introduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from inference.detect import Detection, FaceDetector
from inference.mean_face import SIZE as TEMPLATE_SIZE
from inference.mean_face import mean_face


def face_geometry(
    detections: Sequence[Detection], detector: FaceDetector, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop centres [N, 2], sides [N] and landmark roll angles [N] (degrees) for the detections of one frame.

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
# (x_nose - x_midline = ratio * eye_distance * tan(yaw)); 0.5 reads the most turned frame of the shared
# LivePortrait clip (visibly ~20-25 degrees) as 24-27 degrees. Rough, but good enough to flag turned faces.
NOSE_DEPTH_RATIO = 0.5
# Pitch, from the nose tip's height between the eye line and the mouth line (along the face's own vertical,
# so roll does not count): `nose_height` = (nose - eyes) / (mouth - eyes) measured perpendicular to the eye
# line. In a frontal face it is `FRONTAL_NOSE_HEIGHT`: the median of YuNet's landmarks on 400 frontal-ish
# news photographs of ../shared/data/realfaces_dev (interquartile range 0.547-0.594, i.e. +-2.5 degrees).
# Nodding the head by `pitch` moves the protruding nose tip along the face's vertical by depth * sin(pitch)
# while the eye-to-mouth distance shrinks by cos(pitch): nose_height = FRONTAL - depth / eye_to_mouth *
# tan(pitch). The depth is the yaw model's (0.5 eye distances) and the eye-to-mouth distance is 0.93 eye
# distances in the same photographs, hence PITCH_DEPTH_RATIO = 0.5 / 0.93.
FRONTAL_NOSE_HEIGHT = 0.57
PITCH_DEPTH_RATIO = 0.54


def _landmark_points(detections: Sequence[Detection]) -> tuple[list[int], np.ndarray]:
    """The indices of the detections with landmarks and their points [M, 5, 2] as float64."""
    with_landmarks = [i for i, d in enumerate(detections) if d.landmarks is not None]
    if not with_landmarks:
        return [], np.zeros((0, 5, 2))
    return with_landmarks, np.stack([detections[i].landmarks for i in with_landmarks]).astype(np.float64)


def pose_angles(detections: Sequence[Detection]) -> tuple[np.ndarray, np.ndarray]:
    """Rough head (yaw, pitch) in degrees per detection from YuNet's five landmarks; NaN where there are
    none (Haar). All faces at once (numpy). Positive yaw: the nose points towards image right; positive
    pitch: the face turns up, negative: down.

    Measured in the face's own axes (the eye line and its perpendicular, so roll does not count), for a head
    that nods (pitch) and turns (yaw) like a neck does, the nose tip protruding `NOSE_DEPTH_RATIO` eye
    distances in front of the face plane:
    - pitch: the nose tip's height between the eye line and the mouth line is `FRONTAL_NOSE_HEIGHT -
      PITCH_DEPTH_RATIO * tan(pitch)`;
    - yaw: the nose tip's sideways offset from the face's midline (the eye midpoint -> mouth midpoint line)
      at the nose's height, per eye distance, is `NOSE_DEPTH_RATIO * tan(yaw) / cos(pitch)`. Taking the offset
      from the midline rather than straight below the eye midpoint keeps a lowered or raised head from
      reading as less (or more) turned: a nod swings the nose sideways too when the head is turned.
    Exact for that head model; expressions move the mouth corners a little (a wide-open mouth reads up to
    ~+10 degrees of pitch, a broad smile a few degrees down), and YuNet's landmarks regress towards a frontal
    face, so large angles read smaller than they are, pitch by far the most (inference/attention.py).
    """
    yaw = np.full(len(detections), np.nan, np.float32)
    pitch = np.full(len(detections), np.nan, np.float32)
    with_landmarks, points = _landmark_points(detections)
    if with_landmarks:
        eyes = (points[:, 0] + points[:, 1]) / 2
        eye_vector = points[:, 1] - points[:, 0]  # image-left eye -> image-right eye
        eye_distance = np.maximum(np.linalg.norm(eye_vector, axis=1), 1e-6)
        across = eye_vector / eye_distance[:, None]
        down = np.stack([-across[:, 1], across[:, 0]], axis=1)  # the face's vertical, towards the chin
        nose = points[:, 2] - eyes
        mouth = (points[:, 3] + points[:, 4]) / 2 - eyes
        mouth_down = np.maximum((mouth * down).sum(axis=1), 1e-6)
        nose_height = (nose * down).sum(axis=1) / mouth_down
        tan_pitch = (FRONTAL_NOSE_HEIGHT - nose_height) / PITCH_DEPTH_RATIO
        midline = (mouth * across).sum(axis=1) * nose_height  # the midline's sideways position at the nose
        offset = ((nose * across).sum(axis=1) - midline) / eye_distance
        tan_yaw = offset / NOSE_DEPTH_RATIO / np.sqrt(1.0 + tan_pitch**2)  # * cos(pitch)
        yaw[with_landmarks] = np.degrees(np.arctan(tan_yaw))
        pitch[with_landmarks] = np.degrees(np.arctan(tan_pitch))
    return yaw, pitch


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
    angles: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 crops [N, size, size] (channels 1) or [N, size, size, 3] (BGR) of the faces in `image`.

    `image_scale`: `image` is the frame the detections refer to, resized by this factor (0.5 when a JPEG was
    decoded at half size); the crops frame the same face regions. `angles`: the roll per face to undo
    (default: the landmarks' eye line, see `roll_angles`; `RollRefiner` gives better ones).

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
    centres, sides, landmark_angles = face_geometry(detections, detector, margin)
    angles = landmark_angles if angles is None else np.asarray(angles, np.float32)
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


class RollRefiner:
    """Head roll from the face crop itself, by matching it against rotated copies of the FER2013 mean face.

    Why: YuNet's landmarks regress towards an upright face unless the face is large in YuNet's input (the eye
    line of a face rolled 20 degrees reads ~5 degrees with a 95 px face, ~13 with 140 px, ~18 with 190 px),
    and the pipeline detects on a downscaled frame for speed. The crop already framed like FER2013 (and
    rotated by the landmarks' estimate) is compared with the symmetric mean face rotated by -36..+36 degrees
    (normalised cross-correlation of high-passed images, small shifts allowed): coarse at 24 px in 4 degree
    steps, then at 48 px in 1 degree steps around the best, with a parabolic fit. On the shared clip rotated
    by up to 30 degrees the error is ~2 degrees on average (p90 ~5) for 100-300 px faces, and the readings
    match those of the upright frames as well as with the true angle. ~0.25 ms per face on one core.
    """

    HIGH_PASS_SIGMA = 3.0  # px at 48: removes shading, keeps eyes, brows, nose and mouth
    INNER = 32  # compared window (of 48): the inner face, little background
    COARSE_STEP, SPAN = 4.0, 36.0  # degrees
    COARSE_SHIFT, FINE_SHIFT = 3, 2  # px of translation searched at 24 px, then at 48 px
    MIN_SCORE = 0.3  # faces score 0.4-0.8, noise ~0.05, background 0.2-0.4: below, keep the prior
    MIN_CORRECTION = 3.0  # degrees: smaller residuals are within the estimator's noise and are ignored

    def __init__(self) -> None:
        template = self._high_pass(mean_face().astype(np.float32))
        self.coarse_angles = np.arange(-self.SPAN, self.SPAN + 1e-6, self.COARSE_STEP, dtype=np.float32)
        self.fine_angles = np.arange(
            -self.SPAN - self.COARSE_STEP, self.SPAN + self.COARSE_STEP + 1e-6, 1.0, dtype=np.float32
        )
        half = cv2.resize(template, (TEMPLATE_SIZE // 2,) * 2, interpolation=cv2.INTER_AREA)
        self._coarse_bank = self._bank(half, self.INNER // 2, self.coarse_angles)
        self._fine_bank = self._bank(template, self.INNER, self.fine_angles)

    @classmethod
    def _high_pass(cls, image: np.ndarray) -> np.ndarray:
        return image - cv2.GaussianBlur(image, (0, 0), cls.HIGH_PASS_SIGMA)

    @staticmethod
    def _bank(template: np.ndarray, inner: int, angles: np.ndarray) -> np.ndarray:
        """[len(angles), inner * inner] zero-mean unit-norm centre windows of the rotated template."""
        size = template.shape[0]
        centre, offset = (size - 1) / 2, (size - inner) // 2
        rows = []
        for angle in angles:
            matrix = cv2.getRotationMatrix2D((centre, centre), float(angle), 1.0)
            rotated = cv2.warpAffine(template, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
            window = rotated[offset : offset + inner, offset : offset + inner].ravel()
            window = window - window.mean()
            rows.append(window / max(float(np.linalg.norm(window)), 1e-6))
        return np.asarray(rows, np.float32)

    @staticmethod
    def _windows(image: np.ndarray, inner: int, shift: int, dy: int, dx: int) -> tuple[np.ndarray, int, int]:
        """Zero-mean unit-norm inner x inner windows around the centre offset by (dy, dx), +-shift px."""
        size = image.shape[0]
        limit = size - inner - 2 * shift
        y0 = min(max((size - inner) // 2 + dy - shift, 0), limit)
        x0 = min(max((size - inner) // 2 + dx - shift, 0), limit)
        region = image[y0 : y0 + inner + 2 * shift, x0 : x0 + inner + 2 * shift]
        windows = sliding_window_view(region, (inner, inner)).reshape(-1, inner * inner)
        windows = windows - windows.mean(axis=1, keepdims=True)
        windows /= np.linalg.norm(windows, axis=1, keepdims=True) + 1e-6
        return windows, y0 - (size - inner) // 2, x0 - (size - inner) // 2

    def residual(self, crop: np.ndarray) -> tuple[float, float]:
        """(roll in degrees still present in a 48 px grey crop, match score in [-1, 1]).

        Same sign convention as `roll_angles`: add the residual to the angle the crop was rotated by.
        """
        if crop.shape != (TEMPLATE_SIZE, TEMPLATE_SIZE):
            raise ValueError(
                f"RollRefiner needs {TEMPLATE_SIZE}x{TEMPLATE_SIZE} grey crops, got {crop.shape}"
            )
        probe = self._high_pass(crop.astype(np.float32))
        half = cv2.resize(probe, (TEMPLATE_SIZE // 2,) * 2, interpolation=cv2.INTER_AREA)
        windows, oy, ox = self._windows(half, self.INNER // 2, self.COARSE_SHIFT, 0, 0)
        scores = windows @ self._coarse_bank.T  # [shifts, angles]
        best_window, best_angle = np.unravel_index(int(np.argmax(scores)), scores.shape)
        dy, dx = divmod(int(best_window), 2 * self.COARSE_SHIFT + 1)
        dy, dx = dy + oy, dx + ox
        near = np.flatnonzero(
            np.abs(self.fine_angles - self.coarse_angles[best_angle]) <= self.COARSE_STEP / 2 + 1e-6
        )
        windows, _, _ = self._windows(probe, self.INNER, self.FINE_SHIFT, 2 * dy, 2 * dx)
        fine = (windows @ self._fine_bank[near].T).max(axis=0)
        index = int(np.argmax(fine))
        angle = float(self.fine_angles[near][index])
        if 0 < index < len(fine) - 1:  # parabola through the peak and its neighbours
            left, peak, right = (float(v) for v in fine[index - 1 : index + 2])
            curvature = left - 2 * peak + right
            if curvature < 0:
                angle += 0.5 * (left - right) / curvature
        score = float(fine[index])
        # The template rotated by +a (counter-clockwise on screen) matches a face whose eye line is at -a.
        return (-angle if score >= self.MIN_SCORE else 0.0), score

    def residuals(self, crops: np.ndarray) -> np.ndarray:
        """Residual roll [N] per 48 px grey crop; 0 where it is under `MIN_CORRECTION` (estimator noise)."""
        values = np.array([self.residual(crop)[0] for crop in crops], np.float32)
        values[np.abs(values) < self.MIN_CORRECTION] = 0.0
        return values

    def refine(self, crops: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Roll angles [N] for faces whose 48 px grey `crops` were cut with rotation `prior` [N]."""
        return np.asarray(prior, np.float32) + self.residuals(crops)
