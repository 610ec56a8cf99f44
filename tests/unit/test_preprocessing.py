"""Image preprocessing as a stored model's card records it (despliegue/preprocessing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from despliegue.preprocessing import PRESETS, ImagePreprocessing, parse_number, summary


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_presets_match_keras_applications_preprocess_input(mode: str) -> None:
    """The tf/torch/caffe presets give what keras.applications' own preprocess_input gives."""
    from keras.applications.imagenet_utils import preprocess_input

    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3)).astype(np.uint8)
    ours = ImagePreprocessing(size=(8, 8), **PRESETS[mode]).apply(pixels)
    theirs = preprocess_input(pixels.astype(np.float32), mode=mode)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-4)


def test_raw_and_unit_presets() -> None:
    pixels = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    raw = ImagePreprocessing(size=(1, 1), **PRESETS["raw"]).apply(pixels)
    unit = ImagePreprocessing(size=(1, 1), **PRESETS["unit"]).apply(pixels)
    np.testing.assert_array_equal(raw, [[[[0.0, 128.0, 255.0]]]])
    np.testing.assert_allclose(unit, [[[[0.0, 128 / 255, 1.0]]]], rtol=1e-6)


def test_declared_values_override_field_by_field_after_a_preset() -> None:
    detected = ImagePreprocessing(
        size=(4, 4), **PRESETS["raw"], decided_by="detected", in_model=("stem/rescaling",)
    )
    declared = detected.declare({"preset": "torch", "channels": "bgr", "scale": "1/127.5"})
    assert declared.decided_by == "declared" and declared.in_model == ("stem/rescaling",)
    assert declared.channels == "BGR" and declared.mean == PRESETS["torch"]["mean"]
    assert declared.scale == pytest.approx(1 / 127.5)
    assert detected.declare({}) is detected  # nothing declared: the detection stands
    only_order = detected.declare({"channels": "BGR"})
    assert only_order.is_raw() and only_order.channels == "BGR"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"preset": "imagenet"}, "unknown preprocessing preset"),
        ({"scale": "1/0"}, "not a number"),
        ({"scale": 0}, "non-zero"),
        ({"mean": "1,2"}, "3 finite numbers"),
        ({"std": "1,0,1"}, "std must be > 0"),
        ({"channels": "RGBA"}, "RGB or BGR"),
        ({"gamma": 2.2}, "unknown preprocessing keys"),
    ],
)
def test_bad_declarations_are_refused_saying_why(declared: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePreprocessing(size=(4, 4)).declare(declared)


def test_cards_round_trip_and_older_cards_still_read() -> None:
    chosen = ImagePreprocessing(size=(32, 24), **PRESETS["caffe"], decided_by="declared")
    assert ImagePreprocessing.from_metadata(chosen.to_metadata()) == chosen
    older = {"size": [224, 224], "scale": 1 / 255, "offset": 0.0, "channels": "RGB"}
    assert ImagePreprocessing.from_metadata(older).apply(np.full((1, 1, 1, 3), 255)).max() == 1.0


@pytest.mark.parametrize(
    ("metadata", "line"),
    [
        (
            {"preprocessing": {"size": [8, 8], **PRESETS["raw"], "decided_by": "detected",
                               "in_model": ["stem/rescaling (Rescaling × 0.00392157 + 0)"]}},
            "raw 0–255 (detected, in the model: stem/rescaling (Rescaling × 0.00392157 + 0))",
        ),
        (
            {"preprocessing": {"size": [8, 8], **PRESETS["tf"], "decided_by": "declared"}},
            "pixels / 127.5 − 1 (declared at import)",
        ),
        (
            {"preprocessing": {"size": [8, 8], **PRESETS["caffe"], "decided_by": "declared"}},
            "BGR, pixels − mean per channel (declared at import)",
        ),
        (
            {"reference": True, "preprocessing": {"size": [8, 8], "scale": 1 / 255, "offset": 0}},
            "pixels / 255 (reference model)",
        ),
        (
            {"preprocessing": {"size": [8, 8], **PRESETS["torch"], "decided_by": "declared"}},
            "(pixels / 255 − mean) / std per channel (declared at import)",
        ),
        ({"preprocessing": {"kind": "standardize"}}, "standardize: (x − mean) / std per feature"),
        ({"preprocessing": {"kind": "none"}}, "none: features as sent"),
        ({}, None),
    ],
)  # fmt: skip
def test_summary_is_one_line_a_person_reads(metadata: dict, line: str | None) -> None:
    assert summary(metadata) == line


def test_numbers_are_read_as_people_write_them() -> None:
    assert parse_number("1/255") == pytest.approx(1 / 255)
    assert parse_number(" -1 ") == -1.0 and parse_number(0.5) == 0.5
