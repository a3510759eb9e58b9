"""Cheap per-face quality signals, computed for a whole batch of crops at once (numpy, no Python loop).

They let analytics discount readings from dark, blurry, tiny or strongly rolled faces; none of them
changes the classifier's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceQuality:
    brightness: float  # mean crop intensity, 0..1 (webcam in a dark room: < 0.2)
    contrast: float  # intensity standard deviation, 0..0.5
    sharpness: float  # mean absolute Laplacian of the crop, 0..1 scale (blur or heavy JPEG: low)
    face_fraction: float  # face box area / frame area (far from the camera: small)
    roll_degrees: float  # head roll corrected by alignment (0 without landmarks)

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(getattr(self, name)), 4) for name in self.__dataclass_fields__}


def crop_statistics(crops: np.ndarray) -> np.ndarray:
    """[N, 3] float32 brightness, contrast, sharpness of uint8 crops [N, H, W] or [N, H, W, C]."""
    if len(crops) == 0:
        return np.zeros((0, 3), np.float32)
    grey = crops.astype(np.float32) / 255.0
    if grey.ndim == 4:
        grey = grey.mean(axis=3)
    centre = grey[:, 1:-1, 1:-1]
    neighbours = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
    laplacian = 4 * centre - neighbours
    return np.stack(
        [grey.mean(axis=(1, 2)), grey.std(axis=(1, 2)), np.abs(laplacian).mean(axis=(1, 2))], axis=1
    ).astype(np.float32)
