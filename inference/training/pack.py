"""Pack the shared data into one compressed file for carrying to the GPU machine.

python -m inference.training.pack --out .gpu/fer_pack.npz

Training + PublicTest (never PrivateTest), and the product pipeline's crops of ../shared/data/realfaces_dev
for selecting on real faces (never for training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .data import load_data, pack, real_selection_crops


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".gpu/fer_pack.npz")
    ap.add_argument(
        "--no-real", action="store_true", help="leave out the real-face selection crops (realfaces_dev)"
    )
    a = ap.parse_args(argv)
    data = load_data(a.data)
    real = None if a.no_real else real_selection_crops(data, Path(a.data) if a.data else None)
    p = pack(data, a.out, real=real)
    print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
