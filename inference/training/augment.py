"""Training augmentation as batched tensor ops on the training device (no per-sample Python loops).

Two families, both driven by the config's `augment` section:
- geometry and photometry of the crop (flip, rotation, scale and shift, the crop jitter of a detector box;
  brightness, contrast; erasing), as in the first models;
- webcam capture, so that the model reads the pipeline's crops of real webcam frames as it reads FER2013:
  gamma, a lighting gradient across the face, JPEG compression at quality `jpeg_quality` (luma 8x8 DCT
  quantised with the standard IJG table, block grid at a random phase), down- and up-scaling (a small face
  in a low-resolution frame), Gaussian blur (focus, motion) and sensor noise. FER2013 is grey already, so
  "colour to grey" is what the pipeline does to every crop (`cv2.COLOR_BGR2GRAY`) and needs no augmentation.
Every webcam operation fires per sample with its own probability `<name>_p` (0 or absent: off).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# IJG (libjpeg) standard luminance quantisation table, quality 50.
_JPEG_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II: coefficients = D @ block @ D.T."""
    k = torch.arange(8, dtype=torch.float32, device=device).view(8, 1)
    n = torch.arange(8, dtype=torch.float32, device=device).view(1, 8)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def jpeg_tables(quality: torch.Tensor) -> torch.Tensor:
    """Per-sample luma quantisation tables [B, 8, 8] for JPEG qualities 1..100 (libjpeg's scaling)."""
    q = quality.clamp(1, 100).float()
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q).view(-1, 1, 1)
    table = torch.floor((_JPEG_LUMA.to(q.device) * scale + 50.0) / 100.0)
    return table.clamp(1, 255)


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Grey images [B, 1, H, W] in [0, 1] through JPEG's lossy step (DCT, quantisation, inverse DCT) at the
    per-sample `quality`; H and W are padded to multiples of 8 and the block grid starts at a random
    phase, as a face crop cut out of a compressed frame would see it."""
    b, _, h, w = x.shape
    dy, dx = (int(v) for v in torch.randint(0, 8, (2,)))
    pad_h, pad_w = (-(h + dy)) % 8, (-(w + dx)) % 8
    padded = F.pad(x, (dx, pad_w, dy, pad_h), mode="replicate") * 255.0 - 128.0
    hh, ww = padded.shape[2] // 8, padded.shape[3] // 8
    blocks = padded.view(b, hh, 8, ww, 8).permute(0, 1, 3, 2, 4)  # [B, hh, ww, 8, 8]
    d = _dct_matrix(x.device)
    coefficients = d @ blocks @ d.T
    table = jpeg_tables(quality).view(b, 1, 1, 8, 8)
    restored = d.T @ (torch.round(coefficients / table) * table) @ d
    image = restored.permute(0, 1, 3, 2, 4).reshape(b, 1, hh * 8, ww * 8)
    return ((image[:, :, dy : dy + h, dx : dx + w] + 128.0) / 255.0).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of [B, 1, H, W] (sigma [B] in pixels; 5-tap kernels)."""
    b, _, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device).view(1, 5)
    kernel = torch.exp(-0.5 * (taps / sigma.clamp(min=1e-3).view(b, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    grouped = F.pad(x.view(1, b, h, w), (2, 2, 2, 2), mode="reflect")
    grouped = F.conv2d(grouped, kernel.view(b, 1, 1, 5), groups=b)
    grouped = F.conv2d(grouped, kernel.view(b, 1, 5, 1), groups=b)
    return grouped.view(b, 1, h, w)


def rescale(x: torch.Tensor, factors: tuple[float, ...], chosen: torch.Tensor) -> torch.Tensor:
    """Down-scale (area) then up-scale (bilinear) the samples where `chosen` [B] holds a factor index
    (-1: untouched), one pass per factor."""
    h, w = x.shape[2], x.shape[3]
    out = x.clone()
    for index, factor in enumerate(factors):
        rows = torch.nonzero(chosen == index).flatten()
        if rows.numel() == 0:
            continue
        size = (max(4, round(h * factor)), max(4, round(w * factor)))
        small = F.interpolate(x[rows], size=size, mode="area")
        out[rows] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


WEBCAM_PROBABILITIES = ("gamma_p", "light_p", "jpeg_p", "rescale_p", "blur_p", "noise_p")


def _uniform(b: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(b, device=device) * (hi - lo) + lo


def _fires(b: int, p: float, device: torch.device) -> torch.Tensor:
    return torch.rand(b, device=device) < p


def webcam_photometry(x: torch.Tensor, aug: dict[str, Any]) -> torch.Tensor:
    """Gamma, lighting gradient and JPEG on [B, 1, H, W] in [0, 1] (before the geometric warp, so the
    JPEG grid and the light fall are warped with the face)."""
    b, dev = x.shape[0], x.device
    if aug.get("gamma_p", 0) > 0:
        spread = math.log(float(aug.get("gamma_max", 1.6)))
        gamma = torch.exp(_uniform(b, -spread, spread, dev)).view(b, 1, 1, 1)
        fire = _fires(b, aug["gamma_p"], dev).view(b, 1, 1, 1)
        x = torch.where(fire, x.clamp(min=1e-4) ** gamma, x)
    if aug.get("light_p", 0) > 0:
        h, w = x.shape[2], x.shape[3]
        angle = _uniform(b, 0, 2 * math.pi, dev).view(b, 1, 1, 1)
        strength = _uniform(b, 0, float(aug.get("light_max", 0.5)), dev).view(b, 1, 1, 1)
        ys = torch.linspace(-1, 1, h, device=dev).view(1, 1, h, 1)
        xs = torch.linspace(-1, 1, w, device=dev).view(1, 1, 1, w)
        ramp = 1.0 + strength * (torch.cos(angle) * xs + torch.sin(angle) * ys)
        fire = _fires(b, aug["light_p"], dev).view(b, 1, 1, 1)
        x = torch.where(fire, (x * ramp).clamp(0, 1), x)
    if aug.get("jpeg_p", 0) > 0:
        lo, hi = aug.get("jpeg_quality", [30, 90])
        fire = _fires(b, aug["jpeg_p"], dev)
        if bool(fire.any()):
            rows = torch.nonzero(fire).flatten()
            quality = torch.randint(int(lo), int(hi) + 1, (rows.numel(),), device=dev)
            x = x.clone()
            x[rows] = jpeg_compress(x[rows], quality)
    return x


def webcam_optics(x: torch.Tensor, aug: dict[str, Any]) -> torch.Tensor:
    """Down/up-scaling, blur and noise on [B, 1, H, W] in [0, 1] (after the warp: they act on the crop)."""
    b, dev = x.shape[0], x.device
    if aug.get("rescale_p", 0) > 0:
        factors = tuple(float(f) for f in aug.get("rescale_factors", [0.35, 0.5, 0.7]))
        chosen = torch.randint(0, len(factors), (b,), device=dev)
        chosen = torch.where(_fires(b, aug["rescale_p"], dev), chosen, torch.full_like(chosen, -1))
        x = rescale(x, factors, chosen)
    if aug.get("blur_p", 0) > 0:
        lo, hi = aug.get("blur_sigma", [0.4, 1.2])
        fire = _fires(b, aug["blur_p"], dev).view(b, 1, 1, 1)
        x = torch.where(fire, gaussian_blur(x, _uniform(b, lo, hi, dev)), x)
    if aug.get("noise_p", 0) > 0:
        sigma = _uniform(b, 0, float(aug.get("noise_max", 0.03)), dev).view(b, 1, 1, 1)
        sigma = sigma * _fires(b, aug["noise_p"], dev).view(b, 1, 1, 1)
        x = (x + sigma * torch.randn_like(x)).clamp(0, 1)
    return x


def augment(x: torch.Tensor, aug: dict[str, Any], mean: float = 0.5, std: float = 0.25) -> torch.Tensor:
    """A training batch x [B, 1, H, W], normalised as (pixels / 255 - mean) / std, augmented per `aug`."""
    return augment_pair(x, aug, mean, std)[0]


def augment_pair(
    x: torch.Tensor, aug: dict[str, Any], mean: float = 0.5, std: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented, clean): the batch augmented per `aug`, and the same crops under the same geometry,
    brightness, contrast and erasing but without the webcam degradations (what a teacher labels when the
    student must read a degraded crop as the teacher reads the clean one)."""
    b, dev = x.shape[0], x.device
    webcam = any(aug.get(key, 0) > 0 for key in WEBCAM_PROBABILITIES)
    clean = x
    if webcam:
        x = webcam_photometry((x * std + mean).clamp(0, 1), aug)
        x = (x - mean) / std

    def u(lo: float, hi: float) -> torch.Tensor:
        return _uniform(b, lo, hi, dev)

    ang = u(-1, 1) * math.radians(aug.get("rotate_deg", 10.0))
    scale = 1.0 + u(-1, 1) * aug.get("scale", 0.1)
    tr = aug.get("translate", 0.1) * 2.0  # affine_grid works in [-1, 1]
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, u(-tr, tr)], 1),
            torch.stack([sin * flip, cos, u(-tr, tr)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    both = F.grid_sample(
        torch.cat([x, clean]),
        grid.repeat(2, 1, 1, 1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    x, clean = both[:b], both[b:]
    if webcam:
        x = (webcam_optics((x * std + mean).clamp(0, 1), aug) - mean) / std
    bc = aug.get("brightness", 0.3)
    cc = aug.get("contrast", 0.3)
    gain, offset = u(1 - cc, 1 + cc).view(b, 1, 1, 1), u(-bc, bc).view(b, 1, 1, 1)
    x, clean = x * gain + offset, clean * gain + offset
    p_erase = aug.get("erase_p", 0.5)
    if p_erase > 0:
        h, w = x.shape[2], x.shape[3]
        area = u(0.02, aug.get("erase_max_area", 0.25)) * h * w
        ratio = torch.exp(u(math.log(0.3), math.log(3.3)))
        eh = torch.sqrt(area * ratio).clamp(1, h)
        ew = torch.sqrt(area / ratio).clamp(1, w)
        y0 = torch.rand(b, device=dev) * (h - eh)
        x0 = torch.rand(b, device=dev) * (w - ew)
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        m = (
            (yy >= y0.view(b, 1, 1))
            & (yy < (y0 + eh).view(b, 1, 1))
            & (xx >= x0.view(b, 1, 1))
            & (xx < (x0 + ew).view(b, 1, 1))
        )
        m &= (torch.rand(b, device=dev) < p_erase).view(b, 1, 1)
        noise = torch.randn_like(x)
        x, clean = torch.where(m.unsqueeze(1), noise, x), torch.where(m.unsqueeze(1), noise, clean)
    return x, clean
