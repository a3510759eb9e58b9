"""Webcam-capture augmentation (inference/training/augment.py): batched, per-sample, and faithful to what it
imitates (JPEG's quantisation error matches OpenCV's encoder at the same quality)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from inference.training.augment import (
    WEBCAM_PROBABILITIES,
    augment_pair,
    gaussian_blur,
    jpeg_compress,
    rescale,
)
from inference.training.data import TRAIN

WEBCAM = {key: 1.0 for key in WEBCAM_PROBABILITIES}


def faces(fer_data, count: int = 32) -> torch.Tensor:
    images = fer_data.images[fer_data.split(TRAIN)[:count]]
    return torch.from_numpy(images).float().unsqueeze(1) / 255.0


def test_jpeg_error_is_the_size_of_opencvs_at_the_same_quality(fer_data):
    x = faces(fer_data)
    originals = (x[:, 0].numpy() * 255).astype(np.uint8)
    for quality in (30, 60, 90):
        ours = jpeg_compress(x, torch.full((len(x),), quality))[:, 0].numpy()
        encoded = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1] for image in originals]
        theirs = np.stack([cv2.imdecode(blob, cv2.IMREAD_GRAYSCALE) for blob in encoded]) / 255.0
        our_error, their_error = np.std(ours - originals / 255.0), np.std(theirs - originals / 255.0)
        assert 0.8 < our_error / their_error < 1.25, (quality, our_error, their_error)
    # lower quality, larger error; never outside [0, 1]
    low, high = jpeg_compress(x, torch.full((len(x),), 20)), jpeg_compress(x, torch.full((len(x),), 95))
    assert (low - x).abs().mean() > (high - x).abs().mean()
    assert low.min() >= 0 and low.max() <= 1


def test_per_sample_qualities_blur_and_scales(fer_data):
    x = faces(fer_data, 4)
    mixed = jpeg_compress(x, torch.tensor([20, 95, 20, 95]))
    errors = (mixed - x).abs().flatten(1).mean(1)
    assert errors[0] > errors[1] and errors[2] > errors[3]
    blurred = gaussian_blur(x, torch.tensor([0.01, 2.0, 0.01, 2.0]))
    assert torch.allclose(blurred[0], x[0], atol=1e-4) and not torch.allclose(blurred[1], x[1], atol=1e-2)
    scaled = rescale(x, (0.5,), torch.tensor([0, -1, 0, -1]))
    assert torch.equal(scaled[1], x[1]) and not torch.equal(scaled[0], x[0])
    assert scaled.shape == x.shape


def test_the_clean_view_shares_geometry_and_lacks_only_the_degradation(fer_data):
    x = (faces(fer_data) - 0.5) / 0.25
    torch.manual_seed(0)
    degraded, clean = augment_pair(x, {"rotate_deg": 15, "scale": 0.1, "erase_p": 0.5, **WEBCAM}, 0.5, 0.25)
    assert degraded.shape == clean.shape == x.shape
    assert not torch.allclose(degraded, clean)

    # same warp: the views correlate far more with each other than with the unwarped input
    def corr(a, b):
        a, b = (
            a.flatten(1) - a.flatten(1).mean(1, keepdim=True),
            b.flatten(1) - b.flatten(1).mean(1, keepdim=True),
        )
        return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-9)).mean())

    assert corr(degraded, clean) > corr(clean, x) + 0.1
    torch.manual_seed(0)
    without, clean_without = augment_pair(x, {"rotate_deg": 15, "scale": 0.1, "erase_p": 0.5}, 0.5, 0.25)
    assert torch.allclose(without, clean_without)  # no webcam keys: the two views are one
