"""Per-face quality: cheap signals computed for a whole batch of crops at once (numpy, no Python loop),
one usability score in [0, 1] (`FaceQuality.score`), and problem codes for live participant feedback
(`quality_problems`).

None of this changes the classifier's output; it lets analytics discount readings from dark, blurry, tiny or
turned faces, and tells a participant what to fix ("Move closer", "Your face is too dark").

The signals are model-independent on purpose (a score stored with a reading must mean the same after a
model update): brightness, contrast and sharpness are measured on a `QUALITY_CROP_SIZE` grey version of the
face crop, whatever the classifier's input size or channel count.

Score (documented in docs/architecture.md, "Inference contract"): the product of four factors, each a
linear ramp clipped to [0, 1] that is 1 in the good range, 0 in the unusable range, and 0.5 exactly at the
threshold where `quality_problems` reports the matching problem code:

    size       = ramp(face_px, 24, 64)                                              too_small   < 0.5
    brightness = ramp(brightness, 0.05, 0.25) * ramp(-brightness, -0.90, -0.70)     too_dark / too_bright
    sharpness  = ramp(sharpness / contrast, 0.10, 0.34)                             blurry
    frontal    = ramp(-|yaw_degrees|, -45, -25) * ramp(-|roll_degrees|, -50, -30)   not_frontal
    score      = size * brightness * sharpness * frontal

where ramp(x, lo, hi) = clip((x - lo) / (hi - lo), 0, 1). A product, because a reading is only as usable as
its weakest aspect: a sharp, well-lit face turned 50 degrees away is still unusable. Size counts in pixels
(face_px = sqrt(box w * box h)), not as a fraction of the frame: the classifier sees pixels, so a 100 px face
is as readable in a 1080p frame as in a 320x240 one. At the participant capture size (320x240) the 44 px
threshold is a face under ~2.5 % of the frame, i.e. a participant more than ~1.2 m from a laptop camera.
face_fraction is recorded alongside for analyses that want the relative measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The signals are measured on the crop downscaled to this side (FER2013's 48 px), in grey.
QUALITY_CROP_SIZE = 48

# Size: face_px is sqrt(box w * box h) in frame pixels. The pipeline drops faces under 24 px anyway; from
# 64 px on, the FER2013-framed crop (~1.1 x the box) has more pixels than a 48 px model input needs.
FACE_PX_UNUSABLE, FACE_PX_GOOD = 24.0, 64.0
# Brightness: mean grey level of the crop, 0..1 (a normally lit webcam face: 0.25-0.6).
DARK_UNUSABLE, DARK_GOOD = 0.05, 0.25
BRIGHT_GOOD, BRIGHT_UNUSABLE = 0.70, 0.90
# Sharpness relative to contrast (mean |Laplacian| / std of the 48 px crop, so darkness is not mistaken for
# blur): sharp webcam faces 0.30-0.45; Gaussian blur sigma 3 px on a 320x240 frame ~0.23.
BLUR_UNUSABLE, BLUR_GOOD = 0.10, 0.34
# Pose in degrees: yaw estimated from the landmarks (see `align.pose_angles`), roll from the eye line.
YAW_GOOD, YAW_UNUSABLE = 25.0, 45.0
ROLL_GOOD, ROLL_UNUSABLE = 30.0, 50.0

# Problem thresholds: where the matching factor crosses 0.5 (the ramps' midpoints).
TOO_SMALL_BELOW_PX = (FACE_PX_UNUSABLE + FACE_PX_GOOD) / 2  # 44 px
TOO_DARK_BELOW = (DARK_UNUSABLE + DARK_GOOD) / 2  # 0.15
TOO_BRIGHT_ABOVE = (BRIGHT_GOOD + BRIGHT_UNUSABLE) / 2  # 0.80
BLURRY_BELOW = (BLUR_UNUSABLE + BLUR_GOOD) / 2  # 0.22
NOT_FRONTAL_YAW_ABOVE = (YAW_GOOD + YAW_UNUSABLE) / 2  # 35 degrees
NOT_FRONTAL_ROLL_ABOVE = (ROLL_GOOD + ROLL_UNUSABLE) / 2  # 40 degrees

# Problem codes, most actionable first (a live check shows the first one).
NO_FACE = "no_face"
TOO_SMALL = "too_small"
NOT_FRONTAL = "not_frontal"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
BLURRY = "blurry"
PROBLEM_CODES = (NO_FACE, TOO_SMALL, NOT_FRONTAL, TOO_DARK, TOO_BRIGHT, BLURRY)

_EPSILON = 1e-6


def ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear in between."""
    return float(min(max((value - low) / (high - low), 0.0), 1.0))


@dataclass(frozen=True)
class FaceQuality:
    brightness: float  # mean crop intensity, 0..1 (webcam in a dark room: < 0.15)
    contrast: float  # intensity standard deviation, 0..0.5
    sharpness: float  # mean absolute Laplacian of the 48 px grey crop, 0..1 scale (blur or heavy JPEG: low)
    face_fraction: float  # face box area / frame area (far from the camera: small)
    roll_degrees: float  # head roll undone by alignment (eye line refined by align.RollRefiner)
    face_px: float = 0.0  # sqrt(box w * box h) in frame pixels
    yaw_degrees: float = 0.0  # rough head yaw from the landmarks, + = nose towards image right (0 without)

    @property
    def relative_sharpness(self) -> float:
        """Sharpness per unit of contrast: blur lowers it, a dim or low-contrast face does not."""
        return self.sharpness / self.contrast if self.contrast > _EPSILON else 0.0

    def factors(self) -> dict[str, float]:
        """The score's four factors, each in [0, 1] (see the module docstring)."""
        return {
            "size": ramp(self.face_px, FACE_PX_UNUSABLE, FACE_PX_GOOD),
            "brightness": ramp(self.brightness, DARK_UNUSABLE, DARK_GOOD)
            * ramp(-self.brightness, -BRIGHT_UNUSABLE, -BRIGHT_GOOD),
            "sharpness": ramp(self.relative_sharpness, BLUR_UNUSABLE, BLUR_GOOD),
            "frontal": ramp(-abs(self.yaw_degrees), -YAW_UNUSABLE, -YAW_GOOD)
            * ramp(-abs(self.roll_degrees), -ROLL_UNUSABLE, -ROLL_GOOD),
        }

    @property
    def score(self) -> float:
        """Usability in [0, 1]: size * brightness * sharpness * frontal (1 = nothing to improve)."""
        factors = self.factors()
        return float(factors["size"] * factors["brightness"] * factors["sharpness"] * factors["frontal"])

    def as_dict(self) -> dict[str, float]:
        values = {name: round(float(getattr(self, name)), 4) for name in self.__dataclass_fields__}
        return values | {"score": round(self.score, 4)}


def quality_problems(quality: FaceQuality) -> list[str]:
    """Problem codes for one face, most actionable first (empty when the face is fine).

    Codes: `too_small` (move closer), `not_frontal` (face the camera), `too_dark`, `too_bright`, `blurry`.
    Each fires exactly where its factor of `FaceQuality.score` drops below 0.5.
    """
    problems = []
    if quality.face_px < TOO_SMALL_BELOW_PX:
        problems.append(TOO_SMALL)
    if abs(quality.yaw_degrees) > NOT_FRONTAL_YAW_ABOVE or abs(quality.roll_degrees) > NOT_FRONTAL_ROLL_ABOVE:
        problems.append(NOT_FRONTAL)
    if quality.brightness < TOO_DARK_BELOW:
        problems.append(TOO_DARK)
    elif quality.brightness > TOO_BRIGHT_ABOVE:
        problems.append(TOO_BRIGHT)
    if quality.relative_sharpness < BLURRY_BELOW:
        problems.append(BLURRY)
    return problems


def frame_problems(reading: object) -> list[str]:
    """Problem codes for a `FrameReading`: `no_face` when it has none (or could not be read), otherwise
    `quality_problems` of its primary (largest) face."""
    face = getattr(reading, "primary_face", None)
    if face is None:
        return [NO_FACE]
    return [] if face.quality is None else quality_problems(face.quality)


def crop_statistics(crops: np.ndarray) -> np.ndarray:
    """[N, 3] float32 brightness, contrast, sharpness of uint8 crops [N, H, W] or [N, H, W, C].

    Crops of another side than `QUALITY_CROP_SIZE` are area-resized to it first, so the numbers do not depend
    on the classifier's input size.
    """
    if len(crops) == 0:
        return np.zeros((0, 3), np.float32)
    grey = crops.astype(np.float32) / 255.0
    if grey.ndim == 4:
        grey = grey.mean(axis=3)
    if grey.shape[1:] != (QUALITY_CROP_SIZE, QUALITY_CROP_SIZE):
        side = (QUALITY_CROP_SIZE, QUALITY_CROP_SIZE)
        grey = np.stack([cv2.resize(crop, side, interpolation=cv2.INTER_AREA) for crop in grey])
    centre = grey[:, 1:-1, 1:-1]
    neighbours = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
    laplacian = 4 * centre - neighbours
    return np.stack(
        [grey.mean(axis=(1, 2)), grey.std(axis=(1, 2)), np.abs(laplacian).mean(axis=(1, 2))], axis=1
    ).astype(np.float32)


def face_qualities(
    statistics: np.ndarray,
    boxes: np.ndarray,
    frame_areas: np.ndarray,
    rolls: np.ndarray,
    yaws: np.ndarray,
) -> list[FaceQuality]:
    """FaceQuality per face: `crop_statistics` rows, [N, 4] boxes x, y, w, h, frame pixel counts, angles."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    fractions = boxes[:, 2] * boxes[:, 3] / np.asarray(frame_areas, np.float32)
    sizes = np.sqrt(boxes[:, 2] * boxes[:, 3])
    return [
        FaceQuality(float(b), float(c), float(s), float(f), float(r), float(px), float(y))
        for (b, c, s), f, r, px, y in zip(statistics, fractions, rolls, sizes, yaws, strict=True)
    ]
