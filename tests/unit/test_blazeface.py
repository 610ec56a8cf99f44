"""BlazeFace's decoding (anchors, weighted suppression) and the detector-quality scoring.
The network itself is run in tests/integration (it needs the stored .tflite)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.faces_quality import iou, match, scenes
from despliegue.blazeface import VARIANTS, anchors, weighted_suppression


@pytest.mark.parametrize(("variant", "count"), [("short_range", 896), ("full_range", 2304)])
def test_anchor_count_is_the_networks_output_count(variant: str, count: int) -> None:
    v = VARIANTS[variant]
    centres = anchors(v.input_size, v.strides, v.anchors_per_layer)
    assert centres.shape == (count, 2)
    assert centres.min() > 0 and centres.max() < 1


def test_short_range_anchors_sit_on_a_16_then_an_8_cell_grid() -> None:
    v = VARIANTS["short_range"]
    centres = anchors(v.input_size, v.strides, v.anchors_per_layer)
    assert tuple(centres[0]) == pytest.approx((0.5 / 16, 0.5 / 16))
    assert tuple(centres[1]) == tuple(centres[0])  # two anchors per cell
    assert tuple(centres[512]) == pytest.approx((0.5 / 8, 0.5 / 8))
    assert (centres[512:518] == centres[512]).all()  # six anchors per 8x8 cell


def test_overlapping_boxes_merge_weighted_by_score_and_keep_the_best_score() -> None:
    rows = np.zeros((3, 16), dtype=np.float32)
    rows[:, :4] = [[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]
    faces = weighted_suppression(np.array([0.9, 0.6, 0.8]), rows)
    assert [round(score, 2) for score, _ in faces] == [0.9, 0.8]
    merged = faces[0][1]
    assert merged[0] == pytest.approx((0.5 * 0.9 + 0.52 * 0.6) / 1.5)
    assert faces[1][1][0] == pytest.approx(0.1)  # far away: kept as it was


def test_iou_and_matching_count_each_true_box_once() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    truth = [(0, 0, 10, 10), (50, 50, 10, 10)]
    assert match([(0, 0, 10, 10), (1, 0, 10, 10)], truth) == 1  # a duplicate finds nothing
    assert match([(52, 51, 10, 10)], truth) == 1
    assert match([(30, 30, 5, 5)], truth) == 0


def test_scenes_paste_faces_inside_the_picture_without_overlap() -> None:
    made = scenes()
    assert len(made) >= 40
    for _, image, truth in made:
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        for i, box in enumerate(truth):
            assert box[0] >= 0 and box[1] >= 0
            assert box[0] + box[2] <= 512 and box[1] + box[3] <= 512
            assert all(iou(box, other) == 0 for other in truth[i + 1 :])
