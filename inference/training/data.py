"""Loading FER2013 + FER+ votes (numpy only, no torch).

Two on-disk forms are accepted:
- a directory holding the shared `fer2013.npz` and `ferplus_votes.npz` (see shared/README.md);
- one packed file written by `pack()` (images, labels, usage codes and votes, compressed), used to
  carry the data to the GPU machine, which does not see ../shared.
"""

from __future__ import annotations

import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.pipeline import Pipeline
from inference.resources import shared_dir

from .real_faces import photo_crops

USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
TRAIN, PUBLIC, PRIVATE = 0, 1, 2
PACK_NAME = "fer_pack.npz"


@dataclass(frozen=True)
class FerData:
    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N], FER2013 order
    usage: np.ndarray  # int8 [N], index into USAGES
    votes: np.ndarray  # uint8 [N, 10], FER+ columns (8 emotions, unknown, NF)
    # The product pipeline's crops of the real-face development photos and their labels ("happy",
    # "neutral"), carried in a pack for selecting models where ../shared is not mounted; never trained on.
    real_crops: np.ndarray | None = None  # uint8 [M, 48, 48]
    real_labels: np.ndarray | None = None  # str [M]

    def split(self, which: int) -> np.ndarray:
        """Row indices of one usage split."""
        return np.flatnonzero(self.usage == which)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """The shared material's data folder (inference.resources.shared_dir: $PORTAL_SHARED_DIR or ../shared)."""
    return shared_dir() / "data"


def load_data(path: str | os.PathLike[str] | None = None) -> FerData:
    """Load from a shared data directory or a packed file (None: the default data directory)."""
    p = Path(path) if path is not None else default_data_dir()
    if p.is_dir() and (p / PACK_NAME).exists() and not (p / "fer2013.npz").exists():
        p = p / PACK_NAME
    if p.is_file():
        with np.load(p) as z:
            images = (
                z["images"]
                if "images" in z.files
                else _med_decode(
                    np.frombuffer(lzma.decompress(z["residual_xz"].tobytes()), np.uint8).reshape(
                        tuple(z["shape"])
                    )
                )
            )
            real = (z["real_crops"], z["real_labels"]) if "real_crops" in z.files else (None, None)
            return FerData(images, z["labels"].astype(np.int64), z["usage"], z["votes"], *real)
    with np.load(p / "fer2013.npz", allow_pickle=False) as z:
        images, labels, usage_s = z["images"], z["labels"].astype(np.int64), z["usage"]
    with np.load(p / "ferplus_votes.npz", allow_pickle=False) as z:
        votes = z["votes"]
    usage = np.full(len(usage_s), -1, np.int8)
    for i, name in enumerate(USAGES):
        usage[usage_s == name] = i
    if (usage < 0).any():
        raise ValueError("unexpected usage value in fer2013.npz")
    return FerData(images, labels, usage, votes)


def _med_predict(x: np.ndarray) -> np.ndarray:
    """LOCO-I / JPEG-LS median edge predictor from left (a), up (b), up-left (c) neighbours."""
    a = np.zeros_like(x)
    a[:, :, 1:] = x[:, :, :-1]
    b = np.zeros_like(x)
    b[:, 1:, :] = x[:, :-1, :]
    c = np.zeros_like(x)
    c[:, 1:, 1:] = x[:, :-1, :-1]
    mx, mn = np.maximum(a, b), np.minimum(a, b)
    p = np.where(c >= mx, mn, np.where(c <= mn, mx, a + b - c))
    p[:, 0, :] = a[:, 0, :]
    p[:, 1:, 0] = b[:, 1:, 0]
    return p


def _med_decode(r: np.ndarray) -> np.ndarray:
    """Invert the MED residuals; sequential over the 48x48 positions, vectorised over images."""
    n, h, w = r.shape
    x = np.zeros((n, h, w), np.int16)
    rr = r.astype(np.int16)
    for i in range(h):
        for j in range(w):
            if i == 0:
                p = x[:, 0, j - 1] if j > 0 else np.zeros(n, np.int16)
            elif j == 0:
                p = x[:, i - 1, 0]
            else:
                a, b, c = x[:, i, j - 1], x[:, i - 1, j], x[:, i - 1, j - 1]
                mx, mn = np.maximum(a, b), np.minimum(a, b)
                p = np.where(c >= mx, mn, np.where(c <= mn, mx, a + b - c))
            x[:, i, j] = (rr[:, i, j] + p) % 256
    return x.astype(np.uint8)


def pack(
    data: FerData,
    out: str | os.PathLike[str],
    splits: tuple[int, ...] = (0, 1),
    real: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write the compact single-file form for carrying to another machine.

    Lossless: MED-predictor residuals + xz (about 0.68 of raw; plain zlib on pixels gets 0.95).
    Only `splits` are kept (default Training + PublicTest: the GPU run never sees PrivateTest).
    `real`: (crops, labels) of the real-face development photos (`real_selection_crops`), for selection.
    """
    keep = np.flatnonzero(np.isin(data.usage, splits))
    im = data.images[keep].astype(np.int16)
    res = ((im - _med_predict(im)) % 256).astype(np.uint8)
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    xz = np.frombuffer(lzma.compress(res.tobytes(), preset=6), np.uint8)
    np.savez(
        out_p,
        residual_xz=xz,
        shape=np.array(res.shape),
        labels=data.labels[keep].astype(np.int8),
        usage=data.usage[keep],
        votes=data.votes[keep],
        **({} if real is None else {"real_crops": real[0], "real_labels": np.asarray(real[1], dtype="U16")}),
    )
    return out_p


def real_selection_crops(data: FerData, shared_data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(crops, labels) of the real-face development photos for selection: from a pack if it carries them,
    else cut now by the product pipeline (shipped model's input size, YuNet or Haar) from
    `shared_data_dir/realfaces_dev`."""
    if data.real_crops is not None and data.real_labels is not None:
        return data.real_crops, data.real_labels

    photos = (shared_data_dir or default_data_dir()) / "realfaces_dev"
    crops, labels = photo_crops(Pipeline(), photos)
    return crops, np.asarray(labels, dtype="U16")


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority label over the 8 emotions; -1 where unknown/NF wins or nobody voted.

    argmax over all 10 columns (ties -> first column), as in the FER+ majority protocol.
    """
    maj = votes.argmax(axis=1)
    maj[(maj >= 8) | (votes.sum(axis=1) == 0)] = -1
    return maj


def ferplus_soft_targets(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote distributions over the 8 emotions and a validity mask (rows with a usable majority)."""
    emo = votes[:, :8].astype(np.float32)
    tot = emo.sum(axis=1, keepdims=True)
    valid = (ferplus_majority(votes) >= 0) & (tot[:, 0] > 0)
    return emo / np.maximum(tot, 1.0), valid
