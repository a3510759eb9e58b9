"""A small copy of the shared material (../shared, read-only) for tests that run the real-face evaluation
through the product path: a few photos per label and a short cut of the face video, with the FER data and
the detector linked, not copied. The evaluation's shape is what those tests check; the figures come from
`python -m inference evaluate --json` over the whole set (inference/models/emotion.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from inference.training.real_faces import PHOTOS_DIR, VIDEO_FILE

SUBSET_PHOTOS = 12  # per label
SUBSET_FPS, SUBSET_FRAMES = 10.0, 40  # 3 s relaxed (real_faces.RELAXED_SECONDS: 30 frames) + 1 s
LINKED = ("data/fer2013.npz", "data/ferplus_votes.npz", "models")


def build_shared_subset(shared: Path, root: Path) -> Path:
    """Write the subset of `shared` under `root` and return `root` (a PORTAL_SHARED_DIR)."""
    photos = shared / PHOTOS_DIR
    (root / PHOTOS_DIR).mkdir(parents=True)
    for name in LINKED:
        if (shared / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to((shared / name).resolve())
    with (photos / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = sorted({row["label"] for row in rows})
    chosen = [row for label in labels for row in [r for r in rows if r["label"] == label][:SUBSET_PHOTOS]]
    with (root / PHOTOS_DIR / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["filename", "label"])
        writer.writeheader()
        for row in chosen:
            writer.writerow({"filename": str((photos / row["filename"]).resolve()), "label": row["label"]})
    _cut_video(shared / VIDEO_FILE, root / VIDEO_FILE)
    return root


def photo_count(shared: Path) -> int:
    """The photos a shared folder's realfaces_dev lists."""
    with (shared / PHOTOS_DIR / "labels.csv").open() as handle:
        return len(handle.read().strip().splitlines()) - 1


def _cut_video(source: Path, target: Path) -> None:
    """SUBSET_FRAMES frames spread over the source clip, written at SUBSET_FPS."""
    capture = cv2.VideoCapture(str(source))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, SUBSET_FRAMES).astype(int).tolist())
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), SUBSET_FPS, size)
            writer.write(frame)
        index += 1
    capture.release()
    if writer is None:
        raise FileNotFoundError(f"no frames read from {source}")
    writer.release()
