"""Per-family answers (despliegue/answers/): runner output + model card + request -> response.

No server, no runner: the numbers a runner would return are written here, so each rule a
family applies after its model has spoken is checked on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus

import numpy as np
import pytest

from despliegue.answers.antibiotics import (
    antibiotics_response,
    panel_listing,
    panel_of,
    panel_rows,
    requested_codes,
)
from despliegue.answers.faces import (
    crops_to_validate,
    face_response,
    faces_of,
    super_response,
    validated_faces,
)
from despliegue.answers.falsetrue import falsetrue_response
from despliegue.answers.flowers import UNIDENTIFIED_FLOWER, flowers_response
from despliegue.answers.heatflow import heat_flow_response
from despliegue.config import settings
from despliegue.contracts import ModelCard
from despliegue.errors import ClientError

PANEL = settings().panel("antibiotics")
ROW = [10, 12, 20, 24, 0.99, 14, 18, 24, 18, 19, 24, 15, 28, 23, 28]


def card(tag: str, family: str, **metadata: object) -> ModelCard:
    return ModelCard(
        tag=tag,
        family=family,
        framework="keras",
        reference=True,
        created=datetime(2026, 11, 30, tzinfo=UTC),
        labels={"family": family, "reference": "true"},
        metadata=metadata,
    )


def test_heat_flow_is_rounded_and_names_the_model() -> None:
    answer = heat_flow_response(
        [100.0, 2000.0], [81.23456, 60.0], card("heatflow_svr:v1", "heatflow")
    )
    assert answer.heat_flow_mw_m2 == [81.235, 60.0]
    assert answer.sediment_thickness_m == [100.0, 2000.0] and answer.model == "heatflow_svr:v1"


def test_falsetrue_labels_and_missing_probabilities() -> None:
    rows = np.array([[1.0, 0.91234], [0.0, np.nan]])
    answer = falsetrue_response(rows, card("falsetrue_classifier:v1", "falsetrue"))
    assert answer.is_falsetrue == [1, 0]
    assert answer.probability_real == [0.9123, None]


CLASSES = [
    {"id": 74, "name": "rose"},
    {"id": 41, "name": "barbeton daisy"},
    {"id": 95, "name": "x"},
]
FLOWERS = card("flower_classifier:v1", "flowers", classes=CLASSES)


def test_flowers_are_named_at_the_threshold_and_unidentified_below() -> None:
    answer = flowers_response([[0.5, 0.3, 0.2], [0.2, 0.49, 0.31]], FLOWERS, top_k=2, threshold=0.5)
    named, unknown = answer.predictions
    assert (named.class_id, named.name, named.confidence) == (74, "rose", 0.5)
    assert [c.class_id for c in named.top_k] == [74, 41]
    assert (unknown.class_id, unknown.name) == (None, UNIDENTIFIED_FLOWER)
    assert [c.name for c in unknown.top_k] == ["barbeton daisy", "x"]
    assert answer.threshold == 0.5 and answer.model == "flower_classifier:v1"


def test_faces_below_the_detection_threshold_are_dropped() -> None:
    rows = np.array([ROW, [*ROW[:4], 0.5, *ROW[5:]]], dtype=np.float32)
    (face,) = faces_of(rows, 0.9)
    answer = face_response([[face], []], [None, "png"], card("face_detector:v1", "face_detector"))
    assert [len(image.faces) for image in answer.images] == [1, 0]
    assert answer.images[1].annotated_png == "png" and answer.model == "face_detector:v1"


def test_super_splits_scores_per_image_and_decides_each() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    one = faces_of(np.array([ROW]), 0.9)
    two = faces_of(np.array([ROW, ROW]), 0.9)
    per_image = [one, [], two]
    crops = crops_to_validate([image, image, image], per_image, (16, 16))
    assert len(crops) == 3 and crops[0].shape == (16, 16, 3)
    validated = validated_faces(per_image, [0.2, 0.7, 0.49999], threshold=0.5)
    assert [[f.result for f in faces] for faces in validated] == [[False], [], [True, False]]
    answer = super_response(
        validated,
        [None, None, None],
        0.5,
        card("face_detector:v1", "face_detector"),
        card("face_validator:v1", "face_validator"),
    )
    assert [(i.result, i.score) for i in answer.images] == [(False, 0.2), (False, 0.0), (True, 0.7)]
    assert (answer.detector, answer.model) == ("face_detector:v1", "face_validator:v1")
    with pytest.raises(ValueError, match="2 scores for 3 faces"):
        validated_faces(per_image, [0.1, 0.2], threshold=0.5)


def antibiotic(code: str, length: int = 3) -> ModelCard:
    return card(
        f"modelo_{code.lower()}_nm:v{length}",
        "antibiotics",
        input_length=length,
        classes=["S", "I", "R"],
        preprocessing={"kind": "standardize"},
    )


SERVED = panel_of([antibiotic("AMK"), antibiotic("CAZ", 4)], PANEL)


def test_panel_codes_come_from_the_lower_case_tags() -> None:
    assert list(SERVED) == ["AMK", "CAZ"]
    listing = panel_listing(SERVED, PANEL)
    assert [(e.code, e.input_length, e.preprocessing) for e in listing.antibiotics] == [
        ("AMK", 3, "standardize"),
        ("CAZ", 4, "standardize"),
    ]


@pytest.mark.parametrize(
    ("served", "codes", "features", "loc", "status", "says"),
    [
        ({}, None, [[1.0]], ["codes"], HTTPStatus.NOT_FOUND, "no antibiotic model is served"),
        (SERVED, ["AMK", "XYZ"], [[1, 2, 3]], ["codes", 1], 422, "unknown antibiotic 'XYZ'"),
        (SERVED, ["CAZ"], [[1, 2, 3, 4], [1, 2]], ["features", 1], 422, "expects 4 values"),
        (SERVED, None, [[1, 2, 3, 4, 5]], ["features", 0], 422, "takes 5 values per vector"),
        (SERVED, None, [[1, 2, 3], [1, 2]], ["features", 1], 422, "the same length"),
    ],
)
def test_antibiotic_requests_are_checked_naming_the_field(
    served, codes, features, loc, status, says
) -> None:
    with pytest.raises(ClientError) as refused:
        requested_codes(served, PANEL, features, codes)
    assert refused.value.loc == loc and refused.value.status == status
    assert says in refused.value.msg


def test_antibiotic_answers_follow_the_rows_asked() -> None:
    assert requested_codes(SERVED, PANEL, [[1, 2, 3]], ["AMK", "AMK"]) == ["AMK"]
    assert requested_codes(SERVED, PANEL, [[1, 2, 3, 4]], None) == ["CAZ"]
    rows = panel_rows(["AMK", "CAZ"], [[1.0], [2.0]])
    assert [(row.code, row.features) for row in rows] == [
        ("AMK", [1.0]),
        ("AMK", [2.0]),
        ("CAZ", [1.0]),
        ("CAZ", [2.0]),
    ]
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]]
    answer = antibiotics_response(SERVED, ["AMK", "CAZ"], 2, probabilities)
    assert [[p.predicted_class for p in r.predictions] for r in answer.results] == [
        ["S", "R"],
        ["I", "R"],
    ]
    assert answer.results[1].version == "v4" and answer.results[1].model == "modelo_caz_nm:v4"
    with pytest.raises(ValueError):
        antibiotics_response(SERVED, ["AMK", "CAZ"], 2, probabilities[:3])
