"""Image input shared by every image endpoint: Base64 text or uploaded files -> RGB arrays.

Each image passes the same gates, cheapest first, so a hostile image costs little:
1. encoded size (from the Base64 length, or the uploaded file's size, before decoding)
   <= `limits.images.max_image_bytes`;
2. strict Base64 (an optional `data:image/...;base64,` prefix is accepted; not for uploads);
3. the header names a known format, and width x height <= `limits.images.max_pixels`, read
   before any pixel is decoded (Pillow opens lazily), so a decompression bomb is refused
   without allocating it;
4. full decode (a truncated file fails here), EXIF orientation applied, converted to RGB.

Any failure raises `ClientError` whose `loc` names the field and the image's index, so the
client learns which image of a batch is wrong and why.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from despliegue.config import ImageLimits, settings
from despliegue.errors import ClientError

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def _guard_pillow(max_pixels: int) -> None:
    # Pillow's own bomb guard warns above MAX_IMAGE_PIXELS and raises above twice that; we
    # check the size ourselves first, so make its guard agree with ours and turn the warning
    # into an error (caught below) rather than a log line.
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def encoded_size_bound(limits: ImageLimits) -> int:
    """Longest Base64 text (plus a data-URL prefix) that can hold max_image_bytes."""
    return 4 * -(-limits.max_image_bytes // 3) + 64


def decode_images(
    encoded: Sequence[str], field: str, limits: ImageLimits | None = None
) -> list[np.ndarray]:
    """Decode every image of a request to an (H, W, 3) uint8 array, or raise ClientError."""
    limits = limits or settings().limits.images
    _check_count(len(encoded), field, limits)
    _guard_pillow(limits.max_pixels)
    return [decode_image(text, [field, index], limits) for index, text in enumerate(encoded)]


def decode_image(text: str, loc: list[str | int], limits: ImageLimits) -> np.ndarray:
    payload = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise ClientError(loc, _too_many_bytes(limits), kind="too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(loc, "not valid Base64", kind="base64_error") from None
    return decode_bytes(raw, loc, limits)


def decode_uploads(
    files: Sequence[Path], field: str, limits: ImageLimits | None = None
) -> list[np.ndarray]:
    """Decode uploaded image files (multipart/form-data) through the same gates."""
    limits = limits or settings().limits.images
    _check_count(len(files), field, limits)
    _guard_pillow(limits.max_pixels)
    pixels = []
    for index, path in enumerate(files):
        loc: list[str | int] = [field, index]
        if path.stat().st_size > limits.max_image_bytes:
            raise ClientError(loc, _too_many_bytes(limits), kind="too_large")
        pixels.append(decode_bytes(path.read_bytes(), loc, limits))
    return pixels


def decode_bytes(raw: bytes, loc: list[str | int], limits: ImageLimits) -> np.ndarray:
    """Header check (format, pixel count), then full decode, orientation and RGB."""
    if not raw:
        raise ClientError(loc, "empty image", kind="image_error")
    try:
        image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise ClientError(loc, "not an image in a known format", kind="image_error") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's guard read the size from the header; its message gives the pixel count.
        raise ClientError(loc, f"{_too_many_pixels(limits)}: {exc}", kind="too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ClientError(loc, f"unreadable image header: {exc}", kind="image_error") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ClientError(
            loc, f"{width}x{height} pixels; {_too_many_pixels(limits)}", kind="too_large"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGBA" if "transparency" in image.info else image.mode)
            image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ClientError(loc, _too_many_pixels(limits), kind="too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ClientError(
            loc,
            f"truncated or corrupt {image.format or ''} image: {exc}".replace("  ", " "),
            kind="image_error",
        ) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise ClientError(loc, f"decoded to unexpected shape {pixels.shape}", kind="image_error")
    return pixels


def _check_count(count: int, field: str, limits: ImageLimits) -> None:
    if count == 0:
        raise ClientError([field], "at least one image is required")
    if count > limits.max_images:
        raise ClientError([field], f"{count} images sent; at most {limits.max_images} per request")


def _too_many_bytes(limits: ImageLimits) -> str:
    return f"image is larger than {limits.max_image_bytes} bytes"


def _too_many_pixels(limits: ImageLimits) -> str:
    return f"at most {limits.max_pixels} pixels (width x height) per image"


def encode_png(pixels: np.ndarray) -> str:
    """Base64 PNG of an RGB array (used to return annotated images)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB array to (height, width) with bilinear filtering."""
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
