"""Request and response schemas of the public API: the contract clients see.

Limits come from configuration.yaml, so the OpenAPI document (and the Swagger UI) shows the
same bounds the service enforces. Every model has examples, so "Try it out" works at once.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from despliegue.config import CODE_PATTERN, settings
from despliegue.contracts import ModelCard
from despliegue.images import encoded_size_bound

LIMITS = settings().limits
EXAMPLES = Path(__file__).parent / "examples"


class Request(BaseModel):
    # Unknown fields are refused: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


def answering_model(example: str, what: str = "The tag") -> Any:
    """`model`: the one name of the answering model in every response."""
    return Field(
        description=(
            f"{what} (name:version) of the model that produced this answer: the served model, or "
            "the canary for the share of requests it answers (GET /models); two tags, "
            "comma-separated, when a request was split across both."
        ),
        examples=[example],
    )


def deprecated_model_tag(example: str) -> Any:
    """`model_tag`: the same value as `model`, kept for one release for clients that read it."""
    return Field(
        deprecated=True,
        description="Deprecated: the same value as `model`, which replaces it; removed in the "
        "next release.",
        examples=[example],
    )


SedimentThickness = Annotated[
    float,
    Field(
        ge=0,
        le=LIMITS.heatflow.max_thickness_m,
        allow_inf_nan=False,
        description="Sediment thickness in metres (finite, >= 0).",
    ),
]


def one_or_many(item: Any, many: Any, is_one: Callable[[object], bool]) -> Any:
    """`many` (a list type carrying its own limits) that also takes one `item` alone, wrapped in a
    list before validation, so errors still name `field` or `field.N`. The schema says "one or
    a list" (`anyOf`, the one item first): bentoml.SyncHTTPClient builds the body from the
    schema's first branch, and would iterate a lone value of a field typed as a list (a string
    into its characters, a number into a TypeError)."""
    return Annotated[
        many,
        BeforeValidator(lambda value: [value] if is_one(value) else value),
        WithJsonSchema(
            {"anyOf": [TypeAdapter(item).json_schema(), TypeAdapter(many).json_schema()]}
        ),
    ]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


Thicknesses = Annotated[
    list[SedimentThickness], Field(min_length=1, max_length=LIMITS.heatflow.max_values)
]
OneOrManyThicknesses = one_or_many(SedimentThickness, Thicknesses, _is_number)


class HeatFlowRequest(Request):
    sediment_thickness_m: OneOrManyThicknesses = Field(
        description=(
            "One thickness in metres, or a list of them, each in "
            f"[0, {LIMITS.heatflow.max_thickness_m:g}]; at most "
            f"{LIMITS.heatflow.max_values} values. The answer has one heat flow per value."
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
    model: str = answering_model("heatflow_svr:v1")
    model_tag: str = deprecated_model_tag("heatflow_svr:v1")


NewsText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=LIMITS.falsetrue.max_text_chars),
]

NewsTexts = Annotated[list[NewsText], Field(min_length=1, max_length=LIMITS.falsetrue.max_texts)]
OneOrManyTexts = one_or_many(NewsText, NewsTexts, _is_text)


class FalseTrueRequest(Request):
    texts: OneOrManyTexts = Field(
        description=(
            f"One text, or a list of 1 to {LIMITS.falsetrue.max_texts}, each of 1 to "
            f"{LIMITS.falsetrue.max_text_chars} characters. The answer has one entry per text."
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
    model: str = answering_model("falsetrue_classifier:v1")
    model_tag: str = deprecated_model_tag("falsetrue_classifier:v1")


AntibioticCode = Annotated[
    str,
    StringConstraints(pattern=CODE_PATTERN),
    Field(description="Antibiotic code, as in modelo_<CODE>_NM", examples=["AMK"]),
]
FeatureValue = Annotated[float, Field(allow_inf_nan=False)]
FeatureVector = Annotated[
    list[FeatureValue], Field(min_length=1, max_length=LIMITS.antibiotics.max_features)
]


def _is_one_vector(value: object) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(v, int | float) for v in value)
    )


FeatureVectors = Annotated[
    list[FeatureVector], Field(min_length=1, max_length=LIMITS.antibiotics.max_vectors)
]
OneOrManyVectors = one_or_many(FeatureVector, FeatureVectors, _is_one_vector)


class AntibioticsRequest(Request):
    features: OneOrManyVectors = Field(
        description=(
            "One feature vector of an isolate, or a list of up to "
            f"{LIMITS.antibiotics.max_vectors} vectors; finite numbers, as many per vector as "
            "each requested model expects (GET /antibiotics lists input_length per code)."
        ),
        examples=[[[1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]]],
    )
    codes: list[AntibioticCode] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Antibiotics to answer for. Omitted: every antibiotic whose model takes vectors of "
            "the length sent (GET /antibiotics lists input_length per code)."
        ),
        examples=[["AMK", "CAZ"]],
    )


class Prediction(BaseModel):
    predicted_class: str = Field(examples=["R"])
    probabilities: dict[str, float] = Field(examples=[{"S": 0.08, "I": 0.12, "R": 0.8}])


class AntibioticResult(BaseModel):
    code: str = Field(examples=["AMK"])
    model: str = answering_model("modelo_AMK_NM:v1")
    model_tag: str = deprecated_model_tag("modelo_AMK_NM:v1")
    version: str = Field(description="BentoML model version.", examples=["v1"])
    registered_version: str | None = Field(
        default=None, description="MLflow registered version, if imported from MLflow."
    )
    predictions: list[Prediction] = Field(description="One per feature vector, in order.")


class AntibioticsResponse(BaseModel):
    results: list[AntibioticResult]


class PanelEntry(BaseModel):
    code: str = Field(examples=["AMK"])
    model: str = Field(examples=["modelo_AMK_NM:v1"])
    version: str = Field(examples=["v1"])
    input_length: int = Field(examples=[16])
    classes: list[str] = Field(examples=[["S", "I", "R"]])
    features: list[str] | None = None
    preprocessing: str = Field(examples=["standardize"])
    reference: bool
    source: dict[str, str] = Field(
        description="Labels saying where the model came from (file, mlflow run, version).",
        examples=[{"source": "mlflow", "mlflow_version": "2", "mlflow_alias": "champion"}],
    )


class AntibioticPanelListing(BaseModel):
    model_pattern: str = Field(examples=["modelo_{code}_NM"])
    antibiotics: list[PanelEntry]


class CanaryState(BaseModel):
    tag: str = Field(examples=["heatflow_svr:v3"])
    percent: float = Field(examples=[20.0])


class FamilyLifecycle(BaseModel):
    """What one family serves and could serve (despliegue/lifecycle/)."""

    served: str = Field(description="The tag answering requests.", examples=["heatflow_svr:v2"])
    source: str = Field(
        description='"state file" (promoted) or "configuration" (configuration.yaml\'s version, '
        "no promotion recorded yet)",
        examples=["state file"],
    )
    previous: str | None = Field(
        None, description="What `save_models.py rollback` returns to.", examples=["heatflow_svr:v1"]
    )
    candidates: list[str] = Field(
        default_factory=list, description="Stored versions not served, newest first."
    )
    canary: CanaryState | None = None
    shadow: str | None = Field(None, description="Gets a copy of every request; never answers.")
    loaded: dict[str, str | float | None] = Field(
        default_factory=dict,
        description="What the runner has loaded now (it follows a change within seconds).",
    )
    problem: str | None = Field(None, description="Why the runner could not load what is chosen.")


class BaselineFacts(BaseModel):
    source: str = Field(
        description='"reference", "import" (data passed at import) or "first N requests"',
        examples=["reference"],
    )
    count: int = Field(description="items the baseline was made from")


class DriftState(BaseModel):
    verdict: str = Field(
        examples=["no drift"], description='"no drift", "drift" or "insufficient data"'
    )
    checked_at: str


class FamilyMonitoring(BaseModel):
    """Drift monitoring of one family: each served model's baseline, the family's verdict
    (details: GET /drift/{family})."""

    baseline: dict[str, BaselineFacts] = Field(description="by model tag")
    drift: DriftState


class ServedModels(BaseModel):
    models: list[ModelCard]
    families: dict[str, FamilyLifecycle] = Field(
        default_factory=dict,
        description="Per family (antibiotics: per antibiotic): served, previous, candidates, "
        "canary and shadow.",
    )
    monitoring: dict[str, FamilyMonitoring] = Field(
        default_factory=dict, description="by family; empty when drift capture is off"
    )


# Image endpoints. Only the length of each Base64 text is bounded here (it shows in the
# OpenAPI page); decoding, pixel limits and format checks happen in despliegue.images.
IMAGES = LIMITS.images
Base64Image = Annotated[
    str,
    StringConstraints(min_length=1, max_length=encoded_size_bound(IMAGES)),
]
_IMAGE_RULES = (
    f"Base64 text (a `data:image/...;base64,` prefix is accepted) of a JPEG/PNG/... file of at "
    f"most {IMAGES.max_image_bytes} bytes and {IMAGES.max_pixels} pixels"
)


def _example_image(name: str) -> str:
    """Base64 of a small image shipped in despliegue/examples/, so "Try it out" answers at once."""
    return base64.b64encode((EXAMPLES / name).read_bytes()).decode("ascii")


# A crop of skimage.data.astronaut() (a NASA portrait, public domain): MTCNN finds her face.
EXAMPLE_FACE = _example_image("face.jpg")
# A flower of the kind the reference flower model was trained on (despliegue/families/flowers.py).
EXAMPLE_FLOWER = _example_image("flower.jpg")


def _one_or_many_images(value: object) -> object:
    """The seed's clients send one Base64 string; a list is accepted too."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("image_or_list", "Input should be one image or a list of images")
    return value


ImageList = Annotated[list[Base64Image], Field(min_length=1, max_length=IMAGES.max_images)]
# What the schema says of an image field: one image or a list. bentoml.SyncHTTPClient builds the
# body from the schema, and sends a lone string for a field typed as a list as the list of its
# characters. Validation stays the list's, so errors name `field` or `field.N`.
ONE_OR_MANY_IMAGES = {
    "anyOf": [TypeAdapter(Base64Image).json_schema(), TypeAdapter(ImageList).json_schema()]
}
OneOrManyImages = Annotated[
    ImageList, BeforeValidator(_one_or_many_images), WithJsonSchema(ONE_OR_MANY_IMAGES)
]


class FlowersRequest(Request):
    images: OneOrManyImages = Field(
        description=f"One image, or a list of 1 to {IMAGES.max_images}; each {_IMAGE_RULES}.",
        examples=[[EXAMPLE_FLOWER]],
    )
    top_k: int = Field(default=3, ge=1, le=18, description="How many classes to list per image.")


class FlowerClass(BaseModel):
    class_id: int = Field(description="Oxford-102 category id.", examples=[74])
    name: str = Field(examples=["rose"])
    confidence: float = Field(ge=0, le=1, examples=[0.93])


class FlowerAnswer(BaseModel):
    class_id: int | None = Field(
        description="Oxford-102 id of the top class; null when below the threshold.",
        examples=[74],
    )
    name: str = Field(
        description='Flower name, or "Flor no identificada" below the threshold.',
        examples=["rose"],
    )
    confidence: float = Field(ge=0, le=1, examples=[0.93])
    top_k: list[FlowerClass]


class FlowersResponse(BaseModel):
    predictions: list[FlowerAnswer] = Field(description="One answer per image, in order.")
    threshold: float = Field(examples=[0.5])
    model: str = answering_model("flower_classifier:v1")
    model_tag: str = deprecated_model_tag("flower_classifier:v1")


class FaceRequest(Request):
    input_data: OneOrManyImages = Field(
        description=f"One image, or a list of 1 to {IMAGES.max_images}; each {_IMAGE_RULES}.",
        examples=[EXAMPLE_FACE],
    )
    annotate: bool = Field(
        default=False, description="Also return each image as a PNG with the boxes drawn."
    )


class Box(BaseModel):
    x: int = Field(description="Left edge, pixels from the left.", examples=[176])
    y: int = Field(description="Top edge, pixels from the top.", examples=[48])
    width: int = Field(examples=[82])
    height: int = Field(examples=[106])


class Face(BaseModel):
    box: Box
    confidence: float = Field(ge=0, le=1, description="Detector confidence.", examples=[0.999])
    landmarks: dict[str, tuple[int, int]] = Field(
        description="(x, y) of eyes, nose and mouth corners.",
        examples=[{"left_eye": [205, 90], "right_eye": [240, 88]}],
    )


class ImageFaces(BaseModel):
    faces: list[Face]
    annotated_png: str | None = Field(
        default=None, description="Base64 PNG with the boxes drawn (annotate=true)."
    )


class FaceResponse(BaseModel):
    images: list[ImageFaces] = Field(description="One entry per input image, in order.")
    model: str = answering_model("face_detector:v1", "The detector's tag")
    model_tag: str = deprecated_model_tag("face_detector:v1")


class ValidatedFace(Face):
    score: float = Field(ge=0, le=1, description="Validation CNN score.", examples=[0.97])
    result: bool = Field(description="score >= threshold.", examples=[True])


class ImageVerdict(BaseModel):
    result: bool = Field(
        description="TRUE when at least one detected face passes validation.", examples=[True]
    )
    score: float = Field(
        ge=0, le=1, description="Best validation score (0 with no face).", examples=[0.97]
    )
    faces: list[ValidatedFace] = Field(description="Every detected face with its coordinates.")
    annotated_png: str | None = None


class SuperResponse(BaseModel):
    images: list[ImageVerdict] = Field(description="One verdict per input image, in order.")
    threshold: float = Field(examples=[0.5])
    detector: str = Field(examples=["face_detector:v1"])
    model: str = answering_model("face_validator:v1", "The validation CNN's tag")
    model_tag: str = deprecated_model_tag("face_validator:v1")
