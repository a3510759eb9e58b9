"""Where the inference package finds its files: the shared material, the shipped model, the face detector.

The only place these env vars are read: the web app, the workers, the CLI, the tools and the tests resolve
the same paths through these functions. Relative values in the
env vars are taken relative to the repository root (not the current directory), so that `../shared` means the
same thing from `make test`, a Celery worker and the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
# sha256 of the official opencv_zoo file (the same bytes as the copy in the shared material).
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/" + YUNET_FILENAME


def _from_repo_root(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def shared_dir() -> Path:
    """The shared, read-only material: `$PORTAL_SHARED_DIR`, default `../shared` next to the repo."""
    return _from_repo_root(os.environ.get("PORTAL_SHARED_DIR") or "../shared")


def default_model_path() -> Path:
    """The emotion model: `$PORTAL_MODEL_PATH`, default the shipped `inference/models/emotion.onnx`."""
    override = os.environ.get("PORTAL_MODEL_PATH")
    return _from_repo_root(override) if override else REPO_ROOT / "inference" / "models" / "emotion.onnx"


def fetched_detector_path() -> Path:
    """Where `python -m inference fetch-detector` stores YuNet (`var/` is git-ignored)."""
    return REPO_ROOT / "var" / "models" / YUNET_FILENAME


def default_detector_path() -> Path | None:
    """YuNet's ONNX file, or None when there is none (the pipeline then uses OpenCV's Haar cascade).

    Order: `$PORTAL_FACE_DETECTOR` if set (`haar` forces the fallback; a path is returned even if missing,
    so a typo fails loudly rather than silently degrading to Haar), then the shared copy, then the fetched
    copy in `var/models/`.
    """
    override = os.environ.get("PORTAL_FACE_DETECTOR")
    if override:
        # "haar" forces the fallback, e.g. to compare detectors on one deployment.
        return None if override.strip().lower() == "haar" else _from_repo_root(override)
    for candidate in (shared_dir() / "models" / YUNET_FILENAME, fetched_detector_path()):
        if candidate.is_file():
            return candidate
    return None
