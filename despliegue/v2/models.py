"""Each kind of model as the Open Inference Protocol sees it: typed input and output tensors,
and how an infer request becomes the call of the seed endpoint that answers the same question.

The registry names one `Signature` per model key (`Model.inference`). Infer calls the seed
endpoint's own method on the service (the same validation, image guards, coalesced runner
call, lifecycle routing and drift capture), so a V2 answer equals the seed answer for the same
items; only the envelope differs. Input tensors carry the seed request's field names, so the
seed's error messages name the tensor.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from despliegue.contracts import ModelCard
from despliegue.schemas import (
    AntibioticsRequest,
    FaceRequest,
    FalseTrueRequest,
    FlowersRequest,
    HeatFlowRequest,
)
from despliegue.v2.protocol import InferRequest, Output, V2Error


@dataclass(frozen=True)
class TensorSpec:
    """One tensor in a model's metadata; `accepts` lists every datatype infer takes for it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


Answer = Callable[[Any, InferRequest, ModelCard], Awaitable["Answered | Response"]]


@dataclass(frozen=True)
class Answered:
    outputs: list[Output]
    tag: str


@dataclass(frozen=True)
class Signature:
    """A model kind's tensors, the seed endpoint it answers like (whose token scope it needs),
    and the function that answers an infer request through that endpoint."""

    seed_path: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    answer: Answer

    def input_specs(self, card: ModelCard) -> list[dict[str, Any]]:
        """Input metadata; a panel model's vector length comes from its card."""
        specs = []
        for spec in self.inputs:
            shape = list(spec.shape)
            if spec.name == "features":
                shape = [-1, int(card.metadata["input_length"])]
            specs.append({**spec.metadata(), "shape": shape})
        return specs

    def output_specs(self, card: ModelCard) -> list[dict[str, Any]]:
        specs = []
        for spec in self.outputs:
            shape = list(spec.shape)
            if spec.name == "probabilities":
                shape = [-1, len(card.metadata["classes"])]
            specs.append({**spec.metadata(), "shape": shape})
        return specs

    def tensor(self, request: InferRequest, name: str) -> np.ndarray:
        """The input `name`, checked against its spec; extra inputs are refused by name."""
        for given in request.inputs:
            if given not in {spec.name for spec in self.inputs}:
                names = ", ".join(spec.name for spec in self.inputs)
                raise V2Error([given], f"not an input of this model; its inputs: {names}")
        if name not in request.inputs:
            raise V2Error([name], "missing: this model needs it")
        spec = next(spec for spec in self.inputs if spec.name == name)
        datatype = request.datatypes[name]
        if datatype not in spec.accepts:
            raise V2Error([name], f"datatype {datatype} not taken; use {' or '.join(spec.accepts)}")
        array = request.inputs[name]
        if datatype == "UINT8":
            return array
        if len(spec.shape) == 1 and array.ndim == 2 and array.shape[1] == 1:
            return array.reshape(-1)  # one value per row, as MLServer's clients send them
        if array.ndim not in {len(spec.shape), 1}:
            raise V2Error([name], f"shape {list(array.shape)} must be {list(spec.shape)}")
        return array


def seed_request(schema: type[BaseModel], **fields: Any) -> None:
    """Check the inputs as the seed endpoint's request schema checks them (the same limits),
    the first broken rule named by its tensor."""
    try:
        schema.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_context=False)[0]
        raise V2Error(list(error["loc"]), error["msg"]) from None


def seed(service: Any, endpoint: str) -> Callable[..., Awaitable[Any]]:
    """The seed endpoint's method called in this process: BentoML's default for a service
    calling its own API may be an HTTP call to itself (without the caller's token)."""
    method = getattr(service, endpoint)
    return getattr(method, "local", method)


def number_list(array: np.ndarray) -> list[float]:
    return array.reshape(-1).astype(float).tolist()


def texts_of(name: str, array: np.ndarray) -> list[str]:
    try:
        return [bytes(item).decode("utf-8") for item in array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise V2Error([name, exc.start], "text is not UTF-8") from None


BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s]+$")


def images_of(name: str, array: np.ndarray, datatype: str) -> list[str]:
    """The request's images as the seed endpoints take them (Base64), so the same guards check
    them: BYTES elements are encoded images (Base64 text, or the file's bytes in binary);
    UINT8 is pixels, [N, H, W, 3] or one [H, W, 3], written as PNG (lossless)."""
    if datatype == "BYTES":
        sources = []
        for item in array.reshape(-1):
            raw = bytes(item)
            sources.append(
                raw.decode("ascii") if BASE64_TEXT.match(raw) else base64.b64encode(raw).decode()
            )
        return sources
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise V2Error([name], f"UINT8 shape {list(array.shape)} must be [N, H, W, 3]")
    encoded = []
    for index, pixels in enumerate(array):
        if 0 in pixels.shape:
            raise V2Error([name, index], "an image needs at least one pixel")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, "PNG", compress_level=1)
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded


def parameter(request: InferRequest, name: str, default: int, low: int, high: int) -> int:
    value = request.parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise V2Error(["parameters", name], f"must be an integer in [{low}, {high}]")
    return value


def strings(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [value.encode() for value in values]
    return array


async def answer_heatflow(service: Any, request: InferRequest, card: ModelCard) -> Any:
    values = number_list(HEATFLOW.tensor(request, "sediment_thickness_m"))
    seed_request(HeatFlowRequest, sediment_thickness_m=values)
    response = await seed(service, "heatflow_predict")(sediment_thickness_m=values)
    if isinstance(response, Response):
        return response
    heat_flow = np.asarray(response.heat_flow_mw_m2, dtype=np.float64)
    return Answered([Output("heat_flow_mw_m2", "FP64", heat_flow)], response.model)


async def answer_falsetrue(service: Any, request: InferRequest, card: ModelCard) -> Any:
    texts = texts_of("texts", FALSETRUE.tensor(request, "texts"))
    seed_request(FalseTrueRequest, texts=texts)
    response = await seed(service, "falsetrue_classify")(texts=texts)
    if isinstance(response, Response):
        return response
    probability = [np.nan if p is None else p for p in response.probability_real]
    return Answered(
        [
            Output("is_falsetrue", "INT64", np.asarray(response.is_falsetrue, dtype=np.int64)),
            Output("probability_real", "FP64", np.asarray(probability, dtype=np.float64)),
        ],
        response.model,
    )


async def answer_flowers(service: Any, request: InferRequest, card: ModelCard) -> Any:
    images = images_of("images", FLOWERS.tensor(request, "images"), request.datatypes["images"])
    top_k = parameter(request, "top_k", 3, 1, 18)
    seed_request(FlowersRequest, images=images, top_k=top_k)
    response = await seed(service, "flowers_classify")(images=images, top_k=top_k)
    if isinstance(response, Response):
        return response
    answers = response.predictions
    return Answered(
        [
            Output(
                "class_id",
                "INT64",
                np.asarray([-1 if a.class_id is None else a.class_id for a in answers], np.int64),
            ),
            Output("name", "BYTES", strings([a.name for a in answers])),
            Output("confidence", "FP64", np.asarray([a.confidence for a in answers], np.float64)),
        ],
        response.model,
    )


def faces_json(faces: list[Any]) -> str:
    return json.dumps([face.model_dump(mode="json") for face in faces], separators=(",", ":"))


async def answer_faces(service: Any, request: InferRequest, card: ModelCard) -> Any:
    datatype = request.datatypes.get("input_data", "BYTES")
    images = images_of("input_data", FACE_DETECTOR.tensor(request, "input_data"), datatype)
    seed_request(FaceRequest, input_data=images)
    response = await seed(service, "face_detect")(input_data=images, annotate=False)
    if isinstance(response, Response):
        return response
    return Answered(
        [
            Output(
                "face_count", "INT64", np.asarray([len(i.faces) for i in response.images], np.int64)
            ),
            Output("faces", "BYTES", strings([faces_json(i.faces) for i in response.images])),
        ],
        response.model,
    )


async def answer_super(service: Any, request: InferRequest, card: ModelCard) -> Any:
    datatype = request.datatypes.get("input_data", "BYTES")
    images = images_of("input_data", FACE_VALIDATOR.tensor(request, "input_data"), datatype)
    seed_request(FaceRequest, input_data=images)
    response = await seed(service, "face_validate")(input_data=images, annotate=False)
    if isinstance(response, Response):
        return response
    verdicts = response.images
    return Answered(
        [
            Output("result", "BOOL", np.asarray([v.result for v in verdicts], dtype=bool)),
            Output("score", "FP64", np.asarray([v.score for v in verdicts], np.float64)),
            Output("faces", "BYTES", strings([faces_json(v.faces) for v in verdicts])),
        ],
        response.model,
    )


async def answer_antibiotic(service: Any, request: InferRequest, card: ModelCard) -> Any:
    array = ANTIBIOTIC.tensor(request, "features")
    if array.ndim == 1:
        array = array[np.newaxis]
    features = array.astype(float).tolist()
    code = (card.serves or "").partition(".")[2]
    seed_request(AntibioticsRequest, features=features, codes=[code])
    response = await seed(service, "antibiotics_predict")(features=features, codes=[code])
    if isinstance(response, Response):
        return response
    (result,) = response.results
    classes = list(card.metadata["classes"])
    return Answered(
        [
            Output(
                "predicted_class", "BYTES", strings([p.predicted_class for p in result.predictions])
            ),
            Output(
                "probabilities",
                "FP64",
                np.asarray(
                    [[p.probabilities[c] for c in classes] for p in result.predictions], np.float64
                ).reshape(-1, len(classes)),
            ),
        ],
        result.model,
    )


IMAGE_INPUT = ("BYTES", "UINT8")
NUMBERS = ("FP64", "FP32", "INT64", "INT32")

HEATFLOW = Signature(
    seed_path="heatflow",
    inputs=(TensorSpec("sediment_thickness_m", "FP64", (-1,), NUMBERS),),
    outputs=(TensorSpec("heat_flow_mw_m2", "FP64", (-1,)),),
    answer=answer_heatflow,
)
FALSETRUE = Signature(
    seed_path="falsetrue",
    inputs=(TensorSpec("texts", "BYTES", (-1,), ("BYTES",)),),
    outputs=(
        TensorSpec("is_falsetrue", "INT64", (-1,)),
        TensorSpec("probability_real", "FP64", (-1,)),
    ),
    answer=answer_falsetrue,
)
FLOWERS = Signature(
    seed_path="flowers",
    inputs=(TensorSpec("images", "BYTES", (-1,), IMAGE_INPUT),),
    outputs=(
        TensorSpec("class_id", "INT64", (-1,)),
        TensorSpec("name", "BYTES", (-1,)),
        TensorSpec("confidence", "FP64", (-1,)),
    ),
    answer=answer_flowers,
)
FACE_DETECTOR = Signature(
    seed_path="face",
    inputs=(TensorSpec("input_data", "BYTES", (-1,), IMAGE_INPUT),),
    outputs=(TensorSpec("face_count", "INT64", (-1,)), TensorSpec("faces", "BYTES", (-1,))),
    answer=answer_faces,
)
FACE_VALIDATOR = Signature(
    seed_path="super",
    inputs=(TensorSpec("input_data", "BYTES", (-1,), IMAGE_INPUT),),
    outputs=(
        TensorSpec("result", "BOOL", (-1,)),
        TensorSpec("score", "FP64", (-1,)),
        TensorSpec("faces", "BYTES", (-1,)),
    ),
    answer=answer_super,
)
ANTIBIOTIC = Signature(
    seed_path="antibiotics",
    inputs=(TensorSpec("features", "FP32", (-1, -1), NUMBERS),),
    outputs=(
        TensorSpec("predicted_class", "BYTES", (-1,)),
        TensorSpec("probabilities", "FP64", (-1, -1)),
    ),
    answer=answer_antibiotic,
)
