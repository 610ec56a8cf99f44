"""Images for tests: real photos that installed packages ship, and hostile files made here."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(pixels: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def photo(name: str) -> np.ndarray:
    """An RGB image from skimage.data (astronaut, camera, coffee, chelsea, ...)."""
    from skimage import data

    pixels = getattr(data, name)()
    return np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(side: int = 20000) -> bytes:
    """A valid grayscale PNG of side x side black pixels: ~0.4 MB that inflates to side² bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    whole = encode(photo("astronaut"))
    return whole[: len(whole) // 3]


TEXT_CALLED_JPG = b"name,price\nrose,3\n"  # what a "photo.jpg" holding a CSV looks like
