"""Request schemas: what is accepted and what is refused, with the field named."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import BaseModel, ValidationError

from despliegue.config import settings
from despliegue.schemas import (
    AntibioticsRequest,
    FaceRequest,
    FalseTrueRequest,
    FlowersRequest,
    HeatFlowRequest,
)

LIMITS = settings().limits


def locs(error: ValidationError) -> list[tuple]:
    return [tuple(item["loc"]) for item in error.errors()]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"sediment_thickness_m": 1500}, [1500.0]),
        ({"sediment_thickness_m": 0.0}, [0.0]),
        ({"sediment_thickness_m": [250, 1500.5]}, [250.0, 1500.5]),
    ],
)
def test_heatflow_accepts_one_value_or_a_list(body: dict, expected: list[float]) -> None:
    assert HeatFlowRequest.model_validate_json(json.dumps(body)).sediment_thickness_m == expected


@pytest.mark.parametrize(
    ("raw_body", "loc", "rule"),
    [
        ('{"sediment_thickness_m": -1}', ("sediment_thickness_m", 0), "greater than or equal"),
        ('{"sediment_thickness_m": [1, NaN]}', ("sediment_thickness_m", 1), "finite"),
        ('{"sediment_thickness_m": [Infinity]}', ("sediment_thickness_m", 0), "finite"),
        (
            json.dumps({"sediment_thickness_m": LIMITS.heatflow.max_thickness_m + 1}),
            ("sediment_thickness_m", 0),
            "less than or equal",
        ),
        ('{"sediment_thickness_m": []}', ("sediment_thickness_m",), "at least 1"),
        (
            json.dumps({"sediment_thickness_m": [1.0] * (LIMITS.heatflow.max_values + 1)}),
            ("sediment_thickness_m",),
            "at most",
        ),
        ('{"sediment_thickness_m": "1500"}', ("sediment_thickness_m",), "valid array"),
        ('{"sediment_thickness_m": [true]}', ("sediment_thickness_m", 0), "valid number"),
        ('{"sediment_thickness_m": [1], "extra": 1}', ("extra",), "not permitted"),
        ("{}", ("sediment_thickness_m",), "required"),
    ],
)
def test_heatflow_refuses_bad_values_naming_the_field(raw_body: str, loc: tuple, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HeatFlowRequest.model_validate_json(raw_body)
    assert loc in locs(caught.value)
    assert rule in str(caught.value)


def test_falsetrue_accepts_the_seed_contract() -> None:
    request = FalseTrueRequest.model_validate_json('{"texts": ["uno", "dos"]}')
    assert request.texts == ["uno", "dos"]


def test_falsetrue_takes_one_text_as_a_list_of_one() -> None:
    assert FalseTrueRequest.model_validate_json('{"texts": "uno solo"}').texts == ["uno solo"]


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        (AntibioticsRequest, {"features": [1, 0.5]}, [[1.0, 0.5]]),
        (AntibioticsRequest, {"features": [[1, 0.5], [0, 1]]}, [[1.0, 0.5], [0.0, 1.0]]),
        (FlowersRequest, {"images": "aGk="}, ["aGk="]),
        (FaceRequest, {"input_data": "aGk="}, ["aGk="]),
    ],
)
def test_one_item_or_a_list_where_a_list_is_taken(
    model: type[BaseModel], body: dict, expected: list
) -> None:
    field = next(iter(body))
    assert model.model_validate_json(json.dumps(body)).model_dump()[field] == expected


@pytest.mark.parametrize(
    ("body", "loc", "rule"),
    [
        ({"texts": []}, ("texts",), "at least 1"),
        ({"texts": ["ok", 3]}, ("texts", 1), "valid string"),
        ({"texts": [""]}, ("texts", 0), "at least 1 character"),
        ({"texts": ["x" * (LIMITS.falsetrue.max_text_chars + 1)]}, ("texts", 0), "at most"),
        ({"texts": ["a"] * (LIMITS.falsetrue.max_texts + 1)}, ("texts",), "at most"),
        ({"texts": 3}, ("texts",), "valid array"),
        ({"texts": ""}, ("texts", 0), "at least 1 character"),
        ({"text": ["typo"]}, ("texts",), "required"),
    ],
)
def test_falsetrue_refuses_bad_values_naming_the_field(body: dict, loc: tuple, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FalseTrueRequest.model_validate_json(json.dumps(body))
    assert loc in locs(caught.value)
    assert rule in str(caught.value)


def test_schema_shows_the_configured_limits() -> None:
    one, schema = HeatFlowRequest.model_json_schema()["properties"]["sediment_thickness_m"]["anyOf"]
    assert schema["maxItems"] == LIMITS.heatflow.max_values
    assert schema["items"]["maximum"] == LIMITS.heatflow.max_thickness_m
    assert not math.isnan(schema["items"]["minimum"])
    assert one == schema["items"], "one value has the rules of each value of the list"


@pytest.mark.parametrize(
    ("model", "field", "one"),
    [
        (HeatFlowRequest, "sediment_thickness_m", "number"),
        (FalseTrueRequest, "texts", "string"),
        (FlowersRequest, "images", "string"),
        (FaceRequest, "input_data", "string"),
        (AntibioticsRequest, "features", "array"),
    ],
)
def test_schema_says_one_or_a_list_with_the_one_first(
    model: type[BaseModel], field: str, one: str
) -> None:
    """bentoml.SyncHTTPClient reads the first branch: a lone value must be sent as it is."""
    branches = model.model_json_schema()["properties"][field]["anyOf"]
    assert [branch["type"] for branch in branches] == [one, "array"]
    assert branches[1]["items"] == branches[0]
