"""Image input shared by every image endpoint: Base64 text or uploaded files -> RGB arrays of
the size the model takes.

Each image passes the same gates, cheapest first, so a hostile image costs little:
1. encoded size (from the Base64 length, or the uploaded file's size, before decoding)
   <= `limits.images.max_image_bytes`;
2. strict Base64 (an optional `data:image/...;base64,` prefix is accepted; not for uploads);
3. the header names an allowed format (JPEG, PNG, WebP, GIF, BMP, TIFF: Pillow would open
   some forty others, EPS through Ghostscript), and width x height <= `limits.images.max_pixels`,
   read before any pixel is decoded, so a decompression bomb is refused without allocating it;
4. a JPEG larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale by the decoder
   itself (`Image.draft`), so a 12-megapixel photo for a 224x224 model costs 0.2 megapixels;
5. the decoded pixels of all images of the request <= `limits.images.max_request_pixels`
   (a client mistake, 422), and the pixels every request in flight holds in this worker
   <= `limits.images.max_pixels_in_flight` (429 with Retry-After: try again shortly);
6. full decode (a truncated file fails here), EXIF orientation applied, converted to RGB,
   and resized to the model's input, so nothing larger than the model needs leaves the API.
   A JPEG in RGB or grey is decoded by libjpeg-turbo through simplejpeg, at the scale the
   header chose: the same pixels as Pillow's decoder, 3.4x faster for a 224 px photo (Pillow
   reads it through Python-level chunks and copies it out once more). Anything else (CMYK,
   other formats), or a JPEG libjpeg-turbo warns about, goes through Pillow, which then says
   what is wrong.

Any client mistake raises `ClientError` whose `loc` names the field and the image's index, so
the client learns which image of a batch is wrong and why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from despliegue.config import ImageLimits, settings
from despliegue.errors import ClientError, TryLater

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

# The formats a client may send. Pillow's registry identifies the format from the bytes, never
# from a name or a content type the client chose.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Work small enough to do on the event loop: handing it to a thread costs more than doing it.
# A request with less Base64 than this has its headers read inline (Base64-decoding 64 KB
# takes ~0.1 ms, 5 MB ~10 ms); a request whose decoded pixels are fewer than this (about
# 360x360) is decoded inline (~1 ms). Anything larger runs in a worker thread.
INLINE_HEADER_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 1 << 17

# Orientation values (EXIF tag 0x0112) that swap width and height when applied, and the
# transposition each value asks for (as ImageOps.exif_transpose applies them).
_TRANSPOSING = {5, 6, 7, 8}
_ORIENTED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The JPEG colour modes libjpeg-turbo converts to RGB itself (CMYK and YCCK it cannot).
_TURBO_MODES = ("RGB", "L")


@dataclass(frozen=True)
class ModelInput:
    """The pixels a model takes: exactly `size` (height, width), or an image whose longer
    side is at most `max_side` (aspect ratio kept, never enlarged). Neither: as sent."""

    size: tuple[int, int] | None = None
    max_side: int | None = None

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to."""
        if self.size is not None:
            return self.size[1], self.size[0]
        if self.max_side is None or max(width, height) <= self.max_side:
            return width, height
        factor = self.max_side / max(width, height)
        return max(1, round(width * factor)), max(1, round(height * factor))


AS_SENT = ModelInput()


@dataclass(frozen=True)
class DecodedImage:
    """One image as the endpoint uses it."""

    pixels: np.ndarray  # RGB, resized to the model input
    original_size: tuple[int, int]  # (width, height) as the client sees it (EXIF applied)
    original: Image.Image | None = None  # full-size RGB, kept only when asked (to draw on)

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from `pixels` coordinates to the original image's."""
        height, width = self.pixels.shape[:2]
        return self.original_size[0] / width, self.original_size[1] / height


@dataclass
class ImageHeader:
    """An opened, not yet decoded image: what the header said, and what decoding will cost."""

    image: Image.Image
    loc: list[str | int]
    # (width, height) shown, for a JPEG set to decode at reduced scale (its EXIF comes before
    # the pixels, so the header knows the orientation); other images: their decoded size.
    drafted_from: tuple[int, int] | None = None
    # A JPEG's bytes and EXIF orientation, for libjpeg-turbo (`_turbo_pixels`); None otherwise.
    jpeg: bytes | None = None
    orientation: int = 1

    @property
    def decoded_pixels(self) -> int:
        width, height = self.image.size  # after draft(): what decoding will allocate
        return width * height


# --- reading headers -----------------------------------------------------------------------


def encoded_size_bound(limits: ImageLimits) -> int:
    """Longest Base64 text (plus a data-URL prefix) that can hold max_image_bytes."""
    return 4 * -(-limits.max_image_bytes // 3) + 64


def base64_payload(text: str, loc: list[str | int], limits: ImageLimits) -> bytes:
    if len(text) * 3 // 4 <= limits.max_image_bytes and text[:5].lower() != "data:":
        # The usual text (bare Base64, no line breaks) is decoded as it is: the two
        # substitutions below copy the whole text twice (~4% of the API worker's time on
        # /flowers under load, py-spy).
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass  # whitespace or a wrong character: the full reading below says which
    payload = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise ClientError(loc, _too_many_bytes(limits), kind="too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(loc, "not valid Base64", kind="base64_error") from None


def uploaded_payload(path: Path, loc: list[str | int], limits: ImageLimits) -> bytes:
    if path.stat().st_size > limits.max_image_bytes:
        raise ClientError(loc, _too_many_bytes(limits), kind="too_large")
    return path.read_bytes()


def read_header(
    raw: bytes, loc: list[str | int], limits: ImageLimits, target: ModelInput, keep_original: bool
) -> ImageHeader:
    """Open the image lazily: format and size from its header, nothing decoded yet. A JPEG is
    set to decode at the smallest scale that still covers the model input (unless the full
    image must be kept)."""
    if not raw:
        raise ClientError(loc, "empty image", kind="image_error")
    try:
        image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ClientError(
            loc,
            f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})",
            kind="image_error",
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (twice its MAX_IMAGE_PIXELS, far above ours) read the header.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"({declared.group(1)} pixels)" if declared else "more pixels than Pillow opens"
        raise ClientError(loc, f"{size}; {_too_many_pixels(limits)}", kind="too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ClientError(loc, f"unreadable image header: {exc}", kind="image_error") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ClientError(
            loc,
            f"{width}x{height} ({width * height} pixels); {_too_many_pixels(limits)}",
            kind="too_large",
        )
    if image.format != "JPEG":
        return ImageHeader(image, loc)
    orientation = _orientation(image)
    if keep_original:
        return ImageHeader(image, loc, jpeg=raw, orientation=orientation)
    transposed = orientation in _TRANSPOSING
    shown = (height, width) if transposed else (width, height)
    fit_width, fit_height = target.fit(*shown)
    # Scales down only, by 1/2, 1/4 or 1/8, to no less than the requested size.
    image.draft("RGB", (fit_height, fit_width) if transposed else (fit_width, fit_height))
    return ImageHeader(
        image,
        loc,
        drafted_from=shown if image.size != (width, height) else None,
        jpeg=raw,
        orientation=orientation,
    )


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1  # unreadable EXIF: decode as stored


# --- decoding --------------------------------------------------------------------------------


def decode_header(
    header: ImageHeader, limits: ImageLimits, target: ModelInput, keep_original: bool
) -> DecodedImage:
    """Full decode, orientation, RGB, resize to the model input; the full-size pixels are
    dropped unless kept."""
    turbo = _turbo_pixels(header)
    if turbo is not None:
        return _from_turbo(turbo, header, target, keep_original)
    return decoded_by_pillow(header, limits, target, keep_original)


def decoded_by_pillow(
    header: ImageHeader, limits: ImageLimits, target: ModelInput, keep_original: bool
) -> DecodedImage:
    """`decode_header` by Pillow alone: every format, and the wording of every decode error."""
    loc, image = header.loc, header.image
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGBA" if "transparency" in image.info else image.mode)
            image = image.convert("RGB")
        original_size = header.drafted_from or image.size
        pixels = _resized_pixels(image, target.fit(*original_size))
        original = image if keep_original else None
    except Image.DecompressionBombError:
        raise ClientError(loc, _too_many_pixels(limits), kind="too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ClientError(
            loc,
            f"truncated or corrupt {header.image.format or ''} image: {exc}".replace("  ", " "),
            kind="image_error",
        ) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise ClientError(loc, f"decoded to unexpected shape {pixels.shape}", kind="image_error")
    return DecodedImage(pixels=pixels, original_size=original_size, original=original)


def _turbo_pixels(header: ImageHeader) -> np.ndarray | None:
    """A JPEG's RGB pixels as stored (before orientation), decoded by libjpeg-turbo at the
    scale the header's draft chose; None where Pillow decodes instead (see the module
    docstring)."""
    image = header.image
    if header.jpeg is None or image.mode not in _TURBO_MODES:
        return None
    scale = image.decoderconfig[0] if image.decoderconfig else 1
    width, height = image.size  # after draft(): the size Pillow would decode to
    try:
        pixels = simplejpeg.decode_jpeg(
            header.jpeg, "RGB", min_height=height, min_width=width, min_factor=scale
        )
    except ValueError:  # a warning made strict (truncated, corrupt): Pillow says which
        return None
    return pixels if pixels.shape[:2] == (height, width) else None


def _from_turbo(
    pixels: np.ndarray, header: ImageHeader, target: ModelInput, keep_original: bool
) -> DecodedImage:
    """`decode_header`'s answer for pixels libjpeg-turbo decoded: the common photo, upright at
    the model's size, as decoded; any other oriented and resized by Pillow as a decoded image
    is."""
    method = _ORIENTED.get(header.orientation)
    if method is None and not keep_original:
        shown = (pixels.shape[1], pixels.shape[0])
        original_size = header.drafted_from or shown
        if target.fit(*original_size) == shown:
            return DecodedImage(pixels=pixels, original_size=original_size, original=None)
    image = Image.fromarray(pixels)
    if method is not None:
        image = image.transpose(method)
    original_size = header.drafted_from or image.size
    return DecodedImage(
        pixels=_resized_pixels(image, target.fit(*original_size)),
        original_size=original_size,
        original=image if keep_original else None,
    )


def _resized_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image's pixels at `size` (width, height), resized bilinearly when not already."""
    resized = image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


# --- the budget of decoded pixels ----------------------------------------------------------


class PixelBudget:
    """Decoded pixels held at once by every request in flight in this worker process.

    A request takes its share before decoding and holds what it keeps (model-sized arrays,
    or full images to draw on) until it answers. When the share does not fit, the request is
    refused at once with 429 and Retry-After rather than queued: memory stays bounded, and a
    client (or a load balancer) can try again or elsewhere.
    """

    def __init__(self, capacity: int, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.held = 0

    def take(self, pixels: int) -> None:
        if self.held + pixels > self.capacity:
            raise TryLater(
                f"the images in flight hold {self.held} decoded pixels of this worker's "
                f"{self.capacity} (limits.images.max_pixels_in_flight); this request needs "
                f"{pixels}: retry after {self.retry_after_s} s",
                status=HTTPStatus.TOO_MANY_REQUESTS,
                retry_after_s=self.retry_after_s,
            )
        self.held += pixels

    def give_back(self, pixels: int) -> None:
        self.held -= pixels


# --- what the endpoints call -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def admitted_images(
    sources: Sequence[str] | Sequence[Path],
    field: str,
    target: ModelInput,
    budget: PixelBudget,
    *,
    keep_original: bool = False,
    limits: ImageLimits | None = None,
) -> AsyncIterator[list[DecodedImage]]:
    """Decode a request's images (Base64 strings or uploaded files) for `target`, under the
    request's and the worker's pixel budgets; the budget share is held until the block ends.

    Work that could stall other requests (Base64 of large bodies, large decodes) runs in a
    worker thread; what is small enough is done on the event loop.
    """
    limits = limits or settings().limits.images
    _check_count(len(sources), field, limits)
    encoded_bytes = sum(
        source.stat().st_size if isinstance(source, Path) else len(source) for source in sources
    )
    if encoded_bytes <= INLINE_HEADER_BYTES:
        headers = read_headers(sources, field, limits, target, keep_original)
    else:
        headers = await asyncio.to_thread(
            read_headers, sources, field, limits, target, keep_original
        )
    needed = sum(header.decoded_pixels for header in headers)
    if needed > limits.max_request_pixels:
        raise ClientError(
            [field],
            f"the images decode to {needed} pixels; at most {limits.max_request_pixels} per "
            "request (limits.images.max_request_pixels): send fewer or smaller images",
            kind="too_large",
        )
    budget.take(needed)
    held = needed
    try:
        if needed <= INLINE_DECODE_PIXELS:
            decoded = decode_headers(headers, limits, target, keep_original)
        else:
            decoded = await asyncio.to_thread(
                decode_headers, headers, limits, target, keep_original
            )
        del headers  # the decoders' full-size buffers go with them
        kept = sum(_pixels_held(image) for image in decoded)
        budget.give_back(held - kept)
        held = kept
        yield decoded
    finally:
        budget.give_back(held)


def read_headers(
    sources: Sequence[str] | Sequence[Path],
    field: str,
    limits: ImageLimits,
    target: ModelInput,
    keep_original: bool,
) -> list[ImageHeader]:
    headers = []
    for index, source in enumerate(sources):
        loc: list[str | int] = [field, index]
        raw = (
            uploaded_payload(source, loc, limits)
            if isinstance(source, Path)
            else base64_payload(source, loc, limits)
        )
        headers.append(read_header(raw, loc, limits, target, keep_original))
    return headers


def decode_headers(
    headers: list[ImageHeader], limits: ImageLimits, target: ModelInput, keep_original: bool
) -> list[DecodedImage]:
    """Decode one image at a time: at most one full-size image is in memory at once, besides
    the model-sized results (and the originals, when kept)."""
    decoded = []
    while headers:  # popped, so each full-size buffer is freed once its image is decoded
        decoded.append(decode_header(headers.pop(0), limits, target, keep_original))
    return decoded


def _pixels_held(image: DecodedImage) -> int:
    held = image.pixels.shape[0] * image.pixels.shape[1]
    if image.original is not None:
        held += image.original.width * image.original.height
    return held


def decode_images(
    encoded: Sequence[str],
    field: str,
    limits: ImageLimits | None = None,
    target: ModelInput = AS_SENT,
) -> list[np.ndarray]:
    """Decode Base64 images to (H, W, 3) uint8 arrays for `target`, or raise ClientError:
    the gates above without the budgets and threads (benchmarks and tests call it)."""
    limits = limits or settings().limits.images
    _check_count(len(encoded), field, limits)
    headers = read_headers(encoded, field, limits, target, keep_original=False)
    return [image.pixels for image in decode_headers(headers, limits, target, False)]


def _check_count(count: int, field: str, limits: ImageLimits) -> None:
    if count == 0:
        raise ClientError([field], "at least one image is required")
    if count > limits.max_images:
        raise ClientError([field], f"{count} images sent; at most {limits.max_images} per request")


def _too_many_bytes(limits: ImageLimits) -> str:
    return f"image is larger than {limits.max_image_bytes} bytes"


def _too_many_pixels(limits: ImageLimits) -> str:
    return f"at most {limits.max_pixels} pixels (width x height) per image"


def encode_png(image: Image.Image) -> str:
    """Base64 PNG of an image (used to return annotated images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB array to (height, width) with bilinear filtering."""
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
