"""Fixtures for the training code (torch, the `train` extra): the shared data, and a small pack of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.resources import shared_dir
from tests.support.services import require_file


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_file(shared_dir() / "data" / "fer2013.npz", "FER2013").parent


@pytest.fixture(scope="session")
def fer_data(shared_data: Path):
    from inference.training.data import load_data

    return load_data(shared_data)


@pytest.fixture(scope="session")
def small_pack(tmp_path_factory: pytest.TempPathFactory, fer_data, shared_subset: Path) -> Path:
    """A pack as `python -m inference.training.pack` writes it (with the real-face selection crops, of the
    photos in `shared_subset`), of 3000 Training and 600 PublicTest rows, so a whole training run takes
    seconds."""
    from inference.training.data import PUBLIC, TRAIN, FerData, pack, real_selection_crops

    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [
            rng.choice(fer_data.split(TRAIN), 3000, replace=False),
            rng.choice(fer_data.split(PUBLIC), 600, replace=False),
        ]
    )
    subset = FerData(fer_data.images[rows], fer_data.labels[rows], fer_data.usage[rows], fer_data.votes[rows])
    real = real_selection_crops(fer_data, shared_subset / "data")
    return pack(subset, tmp_path_factory.mktemp("pack") / "fer_pack.npz", real=real)
