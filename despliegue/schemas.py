"""Request and response schemas of the public API: the contract clients see.

Limits come from configuration.yaml, so the OpenAPI document (and the Swagger UI) shows the
same bounds the service enforces. Every model has examples, so "Try it out" works at once.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from despliegue.artifacts import ModelCard
from despliegue.config import settings

LIMITS = settings().limits


class Request(BaseModel):
    # Unknown fields are refused: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


SedimentThickness = Annotated[
    float,
    Field(
        ge=0,
        le=LIMITS.heatflow.max_thickness_m,
        allow_inf_nan=False,
        description="Sediment thickness in metres (finite, >= 0).",
    ),
]


def _one_or_many(value: object) -> object:
    """Accept a bare number where a list is expected, as the seed's clients send one value."""
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


class HeatFlowRequest(Request):
    sediment_thickness_m: Annotated[list[SedimentThickness], BeforeValidator(_one_or_many)] = Field(
        min_length=1,
        max_length=LIMITS.heatflow.max_values,
        description=(
            "A list of thicknesses in metres (a single number is accepted too), each in "
            f"[0, {LIMITS.heatflow.max_thickness_m:g}]; at most "
            f"{LIMITS.heatflow.max_values} values."
        ),
        examples=[[250.0, 1500.0, 6000.0]],
    )


class HeatFlowResponse(BaseModel):
    sediment_thickness_m: list[float] = Field(examples=[[250.0, 1500.0, 6000.0]])
    heat_flow_mw_m2: list[float] = Field(
        description="Predicted surface heat flow, one per input thickness.",
        examples=[[94.1, 71.3, 47.8]],
    )
    unit: str = Field(default="mW/m²", examples=["mW/m²"])
    model: str = Field(description="Tag of the model that answered.", examples=["heatflow_svr:v1"])


NewsText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=LIMITS.falsetrue.max_text_chars),
]


class FalseTrueRequest(Request):
    texts: list[NewsText] = Field(
        min_length=1,
        max_length=LIMITS.falsetrue.max_texts,
        description=(
            f"Texts to classify: 1 to {LIMITS.falsetrue.max_texts} strings of 1 to "
            f"{LIMITS.falsetrue.max_text_chars} characters."
        ),
        examples=[
            [
                "El instituto de estadística situó el paro en el 11,2 % en el tercer trimestre.",
                "¡Un limón al día cura todas las enfermedades y los médicos lo ocultan!",
            ]
        ],
    )


class FalseTrueResponse(BaseModel):
    is_falsetrue: list[int] = Field(description="Per text: 0 = False, 1 = Real.", examples=[[1, 0]])
    probability_real: list[float | None] = Field(
        description="Per text: the model's probability of Real, null if it gives none.",
        examples=[[0.91, 0.07]],
    )
    model: str = Field(
        description="Tag of the model that answered.", examples=["falsetrue_classifier:v1"]
    )


class ServedModels(BaseModel):
    models: list[ModelCard]
