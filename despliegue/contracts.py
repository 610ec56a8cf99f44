"""What runners and the API hand each other, named: model cards, row layouts, request rows.

A runner answers plain numbers (arrays travel cheaply between the processes and a runner knows
nothing about HTTP); the API turns them into response schemas. Both sides read the types here,
so neither owns them and a column is named where it is used, not counted. This module imports
nothing of the project's: any module of either side may import it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

# How a stored model is loaded (its artifact's format).
Framework = Literal["sklearn", "keras", "mtcnn", "blazeface"]


class ModelCard(BaseModel):
    """What `GET /models` tells about a served model."""

    tag: str = Field(examples=["heatflow_svr:3kd7x2qf4ylbqaav"])
    family: str = Field(examples=["heatflow"])
    framework: str = Field(examples=["sklearn"])
    reference: bool = Field(description="True for a reference model built by save_models.py")
    created: datetime
    labels: dict[str, str] = Field(
        default_factory=dict, description="Where the model came from (file, MLflow run/version)"
    )
    preprocessing: str | None = Field(
        default=None,
        description="What is done to the input before the model is called, decided at import "
        "(metadata.preprocessing has the numbers)",
        examples=["raw 0–255 (detected, in the model: rescaling (Rescaling × 0.00392157 + 0))"],
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    runtime: str | None = Field(
        default=None,
        description="What runs the model: onnxruntime (its export, checked against the Keras "
        "model, or MTCNN's networks, when stored), tensorflow, or the framework itself",
        examples=["onnxruntime"],
    )
    runtime_reason: str | None = Field(
        default=None,
        description="Why that runtime serves it (for a Keras model or MTCNN served by "
        "TensorFlow: why its compiled form is not used)",
    )
    serves: str | None = Field(
        None, description="The family key it answers for, e.g. heatflow or antibiotics.AMK"
    )
    lane: Literal["served", "canary", "shadow"] | None = Field(
        None, description="served, canary (a share of requests) or shadow (a copy of them)"
    )


# The face detector's five landmarks, in the order of their (x, y) pairs in a detection row.
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
_DETECTION_WIDTH = 5 + 2 * len(LANDMARKS)


class DetectionRow:
    """One face found by the detector: x, y, width, height, confidence, then an (x, y) pair per
    landmark, in image pixels."""

    BOX = slice(0, 4)
    CONFIDENCE = 4
    LANDMARK_POINTS = slice(5, _DETECTION_WIDTH)
    WIDTH = _DETECTION_WIDTH
    # Columns holding x and y coordinates (box origin and size, landmark pairs).
    X_COLUMNS = (0, 2, *range(5, _DETECTION_WIDTH, 2))
    Y_COLUMNS = (1, 3, *range(6, _DETECTION_WIDTH, 2))


class TextVerdictRow:
    """One text classified by the falsetrue runner: label (0 False, 1 Real), then the
    probability of Real (NaN when the model gives no probabilities)."""

    LABEL = 0
    PROBABILITY_REAL = 1
    WIDTH = 2


class PanelRow(BaseModel):
    """One feature vector for one antibiotic's model (the panel runner's batch item)."""

    code: str
    features: list[float]


class Answered(NamedTuple):
    """One answer item and the tag of the model that produced it."""

    model_tag: str
    answer: Any


class ShadowStats(BaseModel):
    """Shadow answers compared with the served model's, since this runner process started."""

    family: str
    served: str
    shadow: str | None
    compared: int = 0
    agreed: int = 0
    agreement_rate: float | None = None
    mean_absolute_difference: float | None = None
    dropped_batches: int = Field(0, description="batches not shadowed: the shadow was busy")


class RunnerModels(BaseModel):
    """What a runner has loaded, as its `describe` method answers."""

    state_stamp: str
    cards: list[ModelCard]
    lanes: dict[str, dict[str, str | float | None]]
    problems: dict[str, str] = Field(default_factory=dict)
    shadow: dict[str, ShadowStats] = Field(default_factory=dict)
