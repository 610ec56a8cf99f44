"""Photos of varied sizes and formats for the memory runs (face memory, soak).

Every call gives a new random size (so a cache keyed by input shape is exercised as real
traffic would), cut from photos scikit-image ships: faces (astronaut, camera) and scenes
without one (coffee, chelsea, rocket). Mostly JPEG, some PNG, as clients send.
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")


@functools.cache
def _photo(name: str) -> Image.Image:
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


def varied_photo(rng: np.random.Generator, min_side: int = 64, max_side: int = 2048) -> bytes:
    """One encoded photo with a random width and height in [min_side, max_side]."""
    width, height = (int(side) for side in rng.integers(min_side, max_side + 1, size=2))
    image = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))]).resize((width, height))
    buffer = io.BytesIO()
    if rng.random() < 0.8:
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def varied_b64(rng: np.random.Generator, min_side: int = 64, max_side: int = 2048) -> str:
    return base64.b64encode(varied_photo(rng, min_side, max_side)).decode("ascii")
