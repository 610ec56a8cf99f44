"""Request schemas: what is accepted and what is refused, with the field named."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from despliegue.config import settings
from despliegue.schemas import FalseTrueRequest, HeatFlowRequest

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


@pytest.mark.parametrize(
    ("body", "loc", "rule"),
    [
        ({"texts": []}, ("texts",), "at least 1"),
        ({"texts": ["ok", 3]}, ("texts", 1), "valid string"),
        ({"texts": [""]}, ("texts", 0), "at least 1 character"),
        ({"texts": ["x" * (LIMITS.falsetrue.max_text_chars + 1)]}, ("texts", 0), "at most"),
        ({"texts": ["a"] * (LIMITS.falsetrue.max_texts + 1)}, ("texts",), "at most"),
        ({"texts": "not a list"}, ("texts",), "valid array"),
        ({"text": ["typo"]}, ("texts",), "required"),
    ],
)
def test_falsetrue_refuses_bad_values_naming_the_field(body: dict, loc: tuple, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FalseTrueRequest.model_validate_json(json.dumps(body))
    assert loc in locs(caught.value)
    assert rule in str(caught.value)


def test_schema_shows_the_configured_limits() -> None:
    schema = HeatFlowRequest.model_json_schema()["properties"]["sediment_thickness_m"]
    assert schema["maxItems"] == LIMITS.heatflow.max_values
    assert schema["items"]["maximum"] == LIMITS.heatflow.max_thickness_m
    assert not math.isnan(schema["items"]["minimum"])
