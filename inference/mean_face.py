"""The FER2013 mean face: the template `inference.align.RollRefiner` matches face crops against.

48x48 grey, the pixel mean of the FER2013 Training images averaged with its mirror image (so it is exactly
symmetric and cannot bias the roll estimate), rounded to uint8, zlib-compressed and base64-encoded here so
that it ships inside the package with no data file. Regenerate (and check) with

    python -m inference.mean_face [path/to/fer2013.npz]
"""

from __future__ import annotations

import base64
import sys
import zlib
from functools import cache

import numpy as np

from inference.resources import shared_dir

SIZE = 48
_MEAN_FACE_B64 = (
    "eNpVlemCqjgQhZ+3Xdg32UMABUTbBVQEdbw9/ZxzKmj33PrBUnwVKknViWNq8nw2nUxnkqpbCz+ME55mWZ5nWcqTOPQXlq5KApjL"
    "munYhnibzCRFt90g5tmyKCthZbHMeBy4tq5Is4kY0bBpeODTuaxbbsiyZbmut9tP2HZbr8tlxkLX0t+MZtLwExpeNRcBy1ZVvd3t"
    "D0fYYb/b1tUqY8HC/IEMXUHox2Qm644fp8tq87k/Nu0J1jbH/eemWqax7+jyDNB0rujEf3xM56rphkle1sDb0/nSdZfzqUVAXeZJ"
    "6JrqSCm6RpEfU0mzMfyq2u6OLegrDBHtcbetVviBrUngkYWmSkjnYyYbiyDJCgzfnC7XfoD118upwQ+KLAkWhjwDP5VUdQxUTDfi"
    "lM6hPXf9cIMNfXduD5QQj1xTGdNQRWKTuWp5MV+O/LW/3WG3/jrySx57ljqfiGmO05VodXherLfIp3vzHfLZrouc0wpJ44QViTZX"
    "NsAntFkIOF8HBNyG65lwbFkCHhPAjkkKVQPCzIUfsSTNKKXjqcMEhu50pGSyNGGRvzCRCFUE+NlM0lBpQRjFMcOkNwekhGQOG0yV"
    "xXEUBqg6TYCqKs/ncyo1zw98H5eIryiA8BWPArjwwaOiAyirmiJJVKeu57kLx7ZtN+TFtjmfm23BQxcOZ0HfHBSmJCmapioyylS4"
    "LEPXDMuN8vpwPh/qPHItQ9MNSwyGwpcVVdM1VdUxW0rR0BQFvwr4+ni5HNc8wKDwGJb4bOoqcAypm44XRugL8hiOG6Z12/dtnYau"
    "Y9Bo6KMo9BwTqGEaOrIJGbWet7BtRPLi83K/Xz4LDsq2Fx41KdrGBmpapmk5PkvzPOU8YXhAkTb989k3KM08ZSzhnL4y3yHWMi1a"
    "EuwsDE1bo2Ga7v71de9QnJsaLvqCIsIPCLYsx4uycoMuhB2pW7rh+e+/z6GjjjmSd7/blFnkOZaF9bUXfpxXqALqqu7a9/1w//P9"
    "/ec+4PHaiU47flZ57C9oN7AfPsvXu/bS38a6HG6Pr+/vr8dtGN9v/aXdrXPmYz8dmOD3bTc8/oEBGx40/mNAoPAMXbsfeWfk46za"
    "tR2+PoH36BfKXzyMrq7dVVn8y0dpuW0u/f3xeNyul/Olfzyfjx4P1xtc9/7SbMs0+uG9kK/qPfUVVX3ToCUHdEvbNKITUNr7esVD"
    "7827ARMLRKpzOu53OzQlWhH3tw/LwwL3xTsupKeooTwnIVEbKOgOWrjeCPGCb1cXECFXwFTgHqStGncMorkuS+xpVaKZX65NBZHz"
    "qD2oQ2wHCUHbNqMsb9ZlIaxcvz3QOKQjWNSDhR2Okryo1rWwX/71XhV5gtURKF3QQEGc5kU5WrFarZZLXH4ceYpjw7FGHkWKGo+g"
    "PoTRQfRreU6BUKAIvSFIXOg2nkTLHGIDBYkZe92SFBHjqTSSuBroGnQkwzGXcRYFgR8EYShuEeNwpgzdaBFHvGFQAE05TVPO0JYk"
    "OSRGaETG4aTJvjncdR19SRmh82h8n/BA3DA+upSyeWEWNEfXNB0aQQEwkj+kQwlBIIUHa2OOlEHDQ7M0ISpBzJKExdGPje+BkBIB"
    "YQYGKRYpEeaM/7NxgYSJlwi49WbA40eqokDpIGMUkPxlhJPwjQjSFsMrsjzq3hjAX/aLK0SIH7x50lLD/ivghds0uvx/nqLpXad9"
    "C0Kxu2KHQ8odqjp+V/7mXwEuHTTCcKy4v/iL/w/HEo2J"
)


@cache
def mean_face() -> np.ndarray:
    """The template as uint8 [48, 48] (read-only)."""
    face = np.frombuffer(zlib.decompress(base64.b64decode(_MEAN_FACE_B64)), np.uint8).reshape(SIZE, SIZE)
    face.flags.writeable = False
    return face


def build_mean_face(images: np.ndarray) -> np.ndarray:
    """uint8 [48, 48] symmetrised mean of uint8 [N, 48, 48] face images."""
    mean = images.astype(np.float64).mean(axis=0)
    return np.clip(np.rint((mean + mean[:, ::-1]) / 2), 0, 255).astype(np.uint8)


def encode(face: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(face, np.uint8).tobytes(), 9)).decode()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else str(shared_dir() / "data" / "fer2013.npz")
    with np.load(path) as data:
        images = data["images"][data["usage"] == "Training"]
    face = build_mean_face(images)
    same = np.array_equal(face, mean_face())
    print(f"{len(images)} training images; the shipped template is {'identical' if same else 'DIFFERENT'}")
    if not same:
        print(encode(face))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
