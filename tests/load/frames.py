"""Real webcam frames for the load generator: the shared 640x480 MJPEG clip split into its JPEGs."""

from __future__ import annotations

from pathlib import Path

from inference.resources import shared_dir

CLIP_NAME = "liveportrait_d3_640x480_15fps_8s.mjpeg"
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"


def clip_path() -> Path:
    return shared_dir() / "media" / CLIP_NAME


def split_mjpeg(data: bytes) -> list[bytes]:
    """The JPEGs of a concatenated MJPEG stream, cut at each SOI ... EOI pair.

    Baseline JPEG entropy-coded data byte-stuffs 0xFF (0xFF00), so an 0xFFD9 inside a frame is only ever a
    real EOI; cutting at the first EOI after each SOI is therefore exact for these files."""
    frames = []
    start = data.find(SOI)
    while start != -1:
        end = data.find(EOI, start + 2)
        if end == -1:
            break
        frames.append(data[start : end + 2])
        start = data.find(SOI, end + 2)
    return frames


def load_frames(path: Path | None = None) -> list[bytes]:
    """Every JPEG of the shared clip, held in memory (about 2 MB) and cycled through by the participants."""
    path = path or clip_path()
    if not path.is_file():
        raise FileNotFoundError(f"webcam clip not found at {path} (set PORTAL_SHARED_DIR)")
    frames = split_mjpeg(path.read_bytes())
    if not frames:
        raise ValueError(f"no JPEG frames found in {path}")
    return frames
