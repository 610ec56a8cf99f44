"""JPEGs decoded by libjpeg-turbo (simplejpeg) answer exactly what Pillow's decoder answered:
the same pixels, size and kept original, for every chroma subsampling, progressive and grey
files, each EXIF orientation, reduced-scale decoding (draft) and every model input; and
what libjpeg-turbo does not take (CMYK, a truncated file) still goes through Pillow, with
Pillow's wording for what is wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from despliegue.config import ImageLimits
from despliegue.errors import ClientError
from despliegue.images import (
    AS_SENT,
    ModelInput,
    _turbo_pixels,
    decode_header,
    decoded_by_pillow,
    read_header,
)
from tests.image_samples import encode, photo

LIMITS = ImageLimits(
    max_images=4,
    max_image_bytes=20_000_000,
    max_pixels=40_000_000,
    max_request_pixels=40_000_000,
    max_pixels_in_flight=80_000_000,
)
FLOWERS = ModelInput(size=(224, 224))
DETECTOR = ModelInput(max_side=1024)


def sample(width: int, height: int, grey: bool = False) -> np.ndarray:
    """A real photo (scikit-image's astronaut), resized: edges and colour, not flat noise."""
    image = Image.fromarray(photo("astronaut")).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("L") if grey else image)


def jpeg(pixels: np.ndarray, orientation: int = 1, **save: object) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    return encode(pixels, "JPEG", exif=exif.tobytes(), **save)


def header_of(raw: bytes, target: ModelInput, keep_original: bool = False, index: int = 0):
    """A fresh header (decoding consumes one)."""
    return read_header(raw, ["images", index], LIMITS, target, keep_original)


def both_ways(raw: bytes, target: ModelInput, keep_original: bool = False):
    """(libjpeg-turbo's answer, Pillow's answer) for one file, each from its own header."""
    assert _turbo_pixels(header_of(raw, target, keep_original)) is not None
    expected = decoded_by_pillow(
        header_of(raw, target, keep_original), LIMITS, target, keep_original
    )
    got = decode_header(header_of(raw, target, keep_original), LIMITS, target, keep_original)
    return got, expected


def assert_same(got, expected) -> None:
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.c_contiguous
    assert got.pixels.shape == expected.pixels.shape
    assert np.array_equal(got.pixels, expected.pixels)
    assert got.original_size == expected.original_size
    assert (got.original is None) == (expected.original is None)
    if expected.original is not None:
        assert got.original.mode == expected.original.mode == "RGB"
        assert np.array_equal(np.asarray(got.original), np.asarray(expected.original))


@pytest.mark.parametrize(
    "save",
    [
        {"quality": 90, "subsampling": 0},  # 4:4:4
        {"quality": 75, "subsampling": 1},  # 4:2:2
        {"quality": 75, "subsampling": 2},  # 4:2:0, Pillow's default
        {"quality": 85, "progressive": True},
        {"quality": 95, "optimize": True, "subsampling": 2},
    ],
    ids=["444", "422", "420", "progressive", "optimized"],
)
@pytest.mark.parametrize(
    "size",
    [(224, 224), (300, 200), (1000, 700), (2600, 1500), (31, 17)],
    ids=["model-size", "larger", "quarter-scale", "eighth-scale", "tiny"],
)
@pytest.mark.parametrize(
    "target", [FLOWERS, DETECTOR, AS_SENT], ids=["fixed-size", "max-side", "as-sent"]
)
def test_the_same_pixels_as_pillow(save: dict, size: tuple[int, int], target) -> None:
    got, expected = both_ways(jpeg(sample(*size), **save), target)
    assert_same(got, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("target", [FLOWERS, DETECTOR], ids=["fixed-size", "max-side"])
def test_each_exif_orientation_as_pillow_applies_it(orientation: int, target) -> None:
    raw = jpeg(sample(2400, 1300), orientation, quality=85)
    got, expected = both_ways(raw, target)
    assert_same(got, expected)
    if orientation in (5, 6, 7, 8):  # shown upright: height and width swap
        assert got.original_size == (1300, 2400)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_kept_original_is_the_full_image_as_pillow_decodes_it(orientation: int) -> None:
    raw = jpeg(sample(900, 600), orientation, quality=90)
    got, expected = both_ways(raw, DETECTOR, keep_original=True)
    assert_same(got, expected)
    assert got.original.size == ((600, 900) if orientation == 6 else (900, 600))


def test_a_grey_jpeg_becomes_three_equal_channels_as_in_pillow() -> None:
    got, expected = both_ways(jpeg(sample(640, 480, grey=True), quality=80), FLOWERS)
    assert_same(got, expected)
    assert np.array_equal(got.pixels[..., 0], got.pixels[..., 2])


def test_cmyk_goes_through_pillow() -> None:
    buffer = io.BytesIO()
    Image.fromarray(sample(320, 240)).convert("CMYK").save(buffer, "JPEG")
    raw = buffer.getvalue()
    header = header_of(raw, FLOWERS)
    assert header.image.mode == "CMYK" and _turbo_pixels(header) is None
    decoded = decode_header(header, LIMITS, FLOWERS, False)
    assert decoded.pixels.shape == (224, 224, 3)


def test_a_truncated_jpeg_is_refused_in_pillows_words() -> None:
    raw = jpeg(sample(640, 480), quality=90)
    cut = raw[: len(raw) * 2 // 3]
    header = read_header(cut, ["images", 1], LIMITS, FLOWERS, False)
    assert _turbo_pixels(header) is None  # libjpeg-turbo's warning, made strict
    with pytest.raises(ClientError) as caught:
        decode_header(
            read_header(cut, ["images", 1], LIMITS, FLOWERS, False), LIMITS, FLOWERS, False
        )
    assert caught.value.loc == ["images", 1]
    assert "truncated or corrupt JPEG image" in str(caught.value)


def test_the_decoder_is_libjpeg_turbo_on_the_common_photo() -> None:
    """Where the time goes: a JPEG at the model's size, upright, is used as decoded."""
    raw = jpeg(sample(224, 224), quality=85)
    header = read_header(raw, ["images", 0], LIMITS, FLOWERS, False)
    pixels = _turbo_pixels(header)
    decoded = decode_header(
        read_header(raw, ["images", 0], LIMITS, FLOWERS, False), LIMITS, FLOWERS, False
    )
    assert pixels is not None and np.array_equal(decoded.pixels, pixels)
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
