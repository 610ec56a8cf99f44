"""despliegue.answers.faces: detector rows -> answers, crops and drawn boxes (pure functions)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from despliegue.answers.faces import annotate_image, crop, faces_of
from despliegue.schemas import Box

ROW = [182.4, 61.0, 84.0, 112.0, 0.99, 204, 100, 246, 103, 224, 128, 202, 138, 245, 140]


def test_rows_below_the_detection_threshold_are_dropped() -> None:
    rows = np.array([ROW, [*ROW[:4], 0.5, *ROW[5:]]], dtype=np.float32)
    (face,) = faces_of(rows, minimum_confidence=0.9)
    assert face.box == Box(x=182, y=61, width=84, height=112)
    assert face.landmarks["nose"] == (224, 128)
    assert faces_of(np.empty((0, 15), dtype=np.float32), 0.9) == []


def test_crop_is_clipped_to_the_image() -> None:
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert crop(image, Box(x=15, y=5, width=10, height=10)).shape == (5, 5, 3)
    assert crop(image, Box(x=30, y=30, width=4, height=4)).shape == (1, 1, 3)


def test_annotation_draws_the_box_and_keeps_the_image_size() -> None:
    image = Image.new("RGB", (64, 64))
    (face,) = faces_of(np.array([[10, 10, 20, 20, 0.99, *ROW[5:]]], dtype=np.float32), 0.9)
    drawn = np.asarray(annotate_image(image, [face]))
    assert drawn.shape == (64, 64, 3) and drawn[10, 15].any() and not drawn[40, 40].any()
    assert not np.asarray(image).any()  # the input is left untouched


def test_rows_are_mapped_back_to_the_coordinates_of_the_image_sent() -> None:
    rows = np.array([ROW], dtype=np.float32)
    (face,) = faces_of(rows, 0.9, scale=(2.0, 3.0))
    assert face.box == Box(x=365, y=183, width=168, height=336)
    assert face.landmarks["nose"] == (448, 384) and face.confidence == 0.99
