"""Pack the shared data into one compressed file for carrying to the GPU machine.

python -m inference.training.pack --out .gpu/fer_pack.npz
"""

from __future__ import annotations

import argparse

from .data import load_data, pack


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".gpu/fer_pack.npz")
    a = ap.parse_args(argv)
    p = pack(load_data(a.data), a.out)
    print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
