"""despliegue.images: every gate of the shared image input, on real and hostile files."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from despliegue import images
from despliegue.config import ImageLimits
from despliegue.errors import ClientError, TryLater
from despliegue.images import (
    ModelInput,
    PixelBudget,
    admitted_images,
    decode_header,
    decode_headers,
    decode_images,
    read_header,
    read_headers,
)
from tests.image_samples import TEXT_CALLED_JPG, b64, encode, photo, png_bomb, truncated_png

LIMITS = ImageLimits(
    max_images=4,
    max_image_bytes=2_000_000,
    max_pixels=1_000_000,
    max_request_pixels=4_000_000,
    max_pixels_in_flight=8_000_000,
)


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
    # Each alone too: bare Base64 is decoded as it is, anything else read the long way.
    for text_sent in (text, wrapped, f"DATA:image/jpeg;base64,{text}", f" {text}\r\n"):
        (same,) = decode_images([text_sent], "images", LIMITS)
        assert np.array_equal(same, pixels)


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


# --- formats, reduced-scale decoding, model input sizes, pixel budgets ----------------------


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "ICO", "TGA", "SGI", "PCX", "JPEG2000"])
def test_formats_outside_the_allow_list_are_refused_before_decoding(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo("coffee")[:64, :64]).save(buffer, format=fmt)
    error = refused([b64(encode(photo("coffee"))), b64(buffer.getvalue())])
    assert error.loc == ["images", 1] and error.kind == "image_error"
    assert "accepted format (JPEG, PNG, WEBP, GIF, BMP, TIFF)" in error.msg


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_allowed_format_decodes(fmt: str) -> None:
    (pixels,) = decode_images([b64(encode(photo("coffee"), fmt))], "images", LIMITS)
    assert pixels.shape == (400, 600, 3)


def test_pillow_process_wide_pixel_guard_is_left_alone() -> None:
    decode_images([b64(encode(photo("coffee")))], "images", LIMITS)
    refused([b64(encode(np.zeros((1001, 1000, 3), dtype=np.uint8)))])
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own default, as for every process


def big_jpeg(width: int = 4096, height: int = 3072, exif: Image.Exif | None = None) -> bytes:
    image = Image.fromarray(photo("astronaut")).resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, exif=exif.tobytes() if exif else b"")
    return buffer.getvalue()


BIG = ImageLimits(
    max_images=16,
    max_image_bytes=5_000_000,
    max_pixels=16_777_216,
    max_request_pixels=33_554_432,
    max_pixels_in_flight=67_108_864,
)


def test_a_large_jpeg_is_decoded_at_reduced_scale_for_a_small_model() -> None:
    header = read_header(big_jpeg(), ["images", 0], BIG, ModelInput(size=(224, 224)), False)
    assert header.decoded_pixels == 512 * 384  # 1/8 scale: still covers 224x224
    decoded = decode_header(header, BIG, ModelInput(size=(224, 224)), keep_original=False)
    assert decoded.pixels.shape == (224, 224, 3) and decoded.original is None
    assert decoded.original_size == (4096, 3072)


def test_images_for_the_detector_are_scaled_to_its_longest_side_with_their_scale() -> None:
    detector = ModelInput(max_side=1024)
    png = encode(np.asarray(Image.fromarray(photo("camera")).resize((2000, 1000))))
    (image,) = decode_headers(
        read_headers([b64(png)], "input_data", BIG, detector, False), BIG, detector, False
    )
    assert image.pixels.shape == (512, 1024, 3)
    assert image.scale == pytest.approx((2000 / 1024, 1000 / 512))
    small = encode(photo("camera"))  # 512x512: never enlarged
    (same,) = decode_headers(
        read_headers([b64(small)], "input_data", BIG, detector, False), BIG, detector, False
    )
    assert same.pixels.shape == (512, 512, 3) and same.scale == (1.0, 1.0)


def test_a_rotated_jpeg_keeps_its_shown_orientation_when_decoded_at_reduced_scale() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 4096x2048, shown 2048x4096
    detector = ModelInput(max_side=1024)
    header = read_header(big_jpeg(4096, 2048, exif), ["input_data", 0], BIG, detector, False)
    assert header.decoded_pixels == 1024 * 512  # 1/4 scale
    image = decode_header(header, BIG, detector, keep_original=False)
    assert image.original_size == (2048, 4096)
    assert image.pixels.shape == (1024, 512, 3)
    assert image.scale == pytest.approx((4.0, 4.0))


def test_kept_originals_are_decoded_at_full_size() -> None:
    header = read_header(
        big_jpeg(2048, 1536), ["input_data", 0], BIG, ModelInput(max_side=512), True
    )
    assert header.decoded_pixels == 2048 * 1536
    image = decode_header(header, BIG, ModelInput(max_side=512), keep_original=True)
    assert image.original is not None and image.original.size == (2048, 1536)
    assert image.pixels.shape == (384, 512, 3)


def one_bit_png(side: int) -> bytes:
    """A flat one-bit PNG: a few KB that decode to side² pixels (the amplification case)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


FLOWER_INPUT = ModelInput(size=(224, 224))


async def admit(sources: list[str], budget: PixelBudget, target: ModelInput = FLOWER_INPUT) -> list:
    async with admitted_images(sources, "images", target, budget, limits=BIG) as decoded:
        return decoded


def test_a_request_over_the_per_request_pixel_budget_is_a_client_error() -> None:
    budget = PixelBudget(BIG.max_pixels_in_flight)
    bombs = [b64(one_bit_png(4096))] * 3  # 3 x 16.8 Mpx > 33.5 Mpx per request
    with pytest.raises(ClientError) as caught:
        asyncio.run(admit(bombs, budget))
    assert caught.value.loc == ["images"] and caught.value.kind == "too_large"
    assert "max_request_pixels" in caught.value.msg and "50331648 pixels" in caught.value.msg
    assert budget.held == 0


def test_requests_beyond_the_in_flight_budget_get_429_with_retry_after() -> None:
    async def scenario() -> None:
        budget = PixelBudget(40_000_000)
        two = [b64(one_bit_png(4096))] * 2  # 33.5 Mpx, held while it is decoded
        first = admitted_images(two, "images", FLOWER_INPUT, budget, limits=BIG)
        async with first as decoded:
            # What the first request keeps is model-sized: its share shrank after decoding.
            assert budget.held == 2 * 224 * 224
            assert [image.pixels.shape for image in decoded] == [(224, 224, 3)] * 2
            budget.take(30_000_000)  # another request is decoding meanwhile
            with pytest.raises(TryLater) as caught:
                await admit(two, budget)
            budget.give_back(30_000_000)
        assert budget.held == 0
        response = caught.value.to_response()
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert len(await admit(two, budget)) == 2  # room again once the others answered

    asyncio.run(scenario())


def test_large_pixel_counts_are_decoded_off_the_event_loop_even_from_small_bodies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case: a 45 KB body of one-bit 4096² PNGs was decoded on the event loop,
    because the choice was made on the encoded size."""
    threads: list[str] = []
    real = images.decode_header

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "decode_header", recording)
    small_body = [b64(one_bit_png(2048))]
    assert len(small_body[0]) < images.INLINE_HEADER_BYTES
    asyncio.run(admit(small_body, PixelBudget(BIG.max_pixels_in_flight)))
    assert threads and threading.main_thread().name not in threads
    threads.clear()
    asyncio.run(admit([b64(encode(photo("coffee")[:200, :200]))], PixelBudget(10**8)))
    assert threads == [threading.main_thread().name]  # small work stays inline
