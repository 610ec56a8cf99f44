"""despliegue.images: every gate of the shared image input, on real and hostile files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from despliegue.config import ImageLimits
from despliegue.errors import ClientError
from despliegue.images import decode_images
from tests.image_samples import TEXT_CALLED_JPG, b64, encode, photo, png_bomb, truncated_png

LIMITS = ImageLimits(max_images=4, max_image_bytes=2_000_000, max_pixels=1_000_000)


def refused(images: list[str]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        decode_images(images, "images", LIMITS)
    return caught.value


def test_a_real_photo_decodes_to_rgb_pixels() -> None:
    astronaut = photo("astronaut")
    (pixels,) = decode_images([b64(encode(astronaut))], "images", LIMITS)
    assert pixels.dtype == np.uint8 and pixels.shape == (512, 512, 3)
    assert np.array_equal(pixels, astronaut)


def test_data_url_prefix_and_line_breaks_are_accepted() -> None:
    text = b64(encode(photo("coffee"), "JPEG"))
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    (pixels,) = decode_images([f"data:image/jpeg;base64,{wrapped}"], "images", LIMITS)
    assert pixels.shape == (400, 600, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_every_colour_mode_becomes_rgb(mode: str) -> None:
    image = Image.fromarray(photo("chelsea")).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 256)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    (pixels,) = decode_images([b64(buffer.getvalue())], "images", LIMITS)
    assert pixels.shape == (300, 451, 3) and pixels.dtype == np.uint8


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    raw = encode(pixels, "JPEG", exif=exif.tobytes(), quality=95)
    (shown,) = decode_images([b64(raw)], "images", LIMITS)
    assert shown.shape == (40, 20, 3)
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize(
    ("raw_or_text", "kind", "words"),
    [
        (truncated_png(), "image_error", "truncated"),
        (TEXT_CALLED_JPG, "image_error", "not an image"),
        (png_bomb(20000), "too_large", "(400000000 pixels)"),
        (encode(np.zeros((1001, 1000, 3), dtype=np.uint8)), "too_large", "(1001000 pixels)"),
        ("not base64 at all!", "base64_error", "Base64"),
        ("QUJDR", "base64_error", "Base64"),
        (b"\x00" * 2_000_001, "too_large", "bytes"),
    ],
    ids=[
        "truncated",
        "text-as-jpg",
        "bomb",
        "too-many-pixels",
        "bad-base64",
        "bad-padding",
        "too-many-bytes",
    ],
)
def test_hostile_image_is_refused_naming_its_index(raw_or_text, kind: str, words: str) -> None:
    text = raw_or_text if isinstance(raw_or_text, str) else b64(raw_or_text)
    error = refused([b64(encode(photo("coffee"))), text])
    assert error.loc == ["images", 1]
    assert error.kind == kind
    assert words in error.msg


def test_empty_and_overlong_lists_are_refused() -> None:
    assert refused([]).loc == ["images"]
    too_many = refused([b64(encode(photo("camera")))] * 5)
    assert too_many.loc == ["images"] and "at most 4" in too_many.msg
