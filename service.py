"""Despliegue: the public HTTP API over every model family.

A request goes: HTTP -> the edge (despliegue/http/: probes, audit, auth, limits, content checks)
-> this service (pydantic validation, decoding) -> the family's runner service in `runners/`
(adaptive batching, model call) -> a response schema that names the model tag that answered.
A CNN family's runner is its own process, reached through `bentoml.depends`; a small model's
(scikit-learn: `placement` in despliegue/registry.py) is an instance of the same runner class
inside this worker, since a hop costs more than the model. Either way concurrent requests
share one call to it (despliegue/coalescing.py). What the runners have
loaded, and the answers about it, are the catalog's (despliegue/catalog.py).

Serve it with `bentoml serve` (see README.md); the Swagger UI is at `/`.
"""

from __future__ import annotations

import asyncio
import sys
import typing
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from despliegue import registry
from despliegue.answers.antibiotics import (
    antibiotics_response,
    panel_listing,
    panel_of,
    panel_rows,
    requested_codes,
)
from despliegue.answers.faces import (
    annotate_image,
    crops_to_validate,
    face_response,
    faces_of,
    super_response,
    validated_faces,
)
from despliegue.answers.falsetrue import falsetrue_response
from despliegue.answers.flowers import flowers_response
from despliegue.answers.heatflow import heat_flow_response
from despliegue.artifacts import require_models_in_store
from despliegue.bentoml_compat import bentoml_home
from despliegue.catalog import Catalog
from despliegue.coalescing import RunnerMethod, coalesce, surviving_restarts
from despliegue.config import settings
from despliegue.contracts import ModelCard, ShadowStats
from despliegue.drift.capture import count_pending, families, observed, storage_dir, worker_name
from despliegue.drift.recorder import Recorder
from despliegue.errors import (
    ClientError,
    answers_client_errors,
    install_log_filter,
)
from despliegue.heap import limit_malloc_arenas, settle_worker_heap
from despliegue.home_lock import claim_home, starts_a_server
from despliegue.http.auth import (
    token_book,
)
from despliegue.http.stack import install_edge
from despliegue.images import (
    DecodedImage,
    ModelInput,
    PixelBudget,
    admitted_images,
    encode_png,
)
from despliegue.lifecycle.metrics import unzip
from despliegue.lifecycle.pack import building_a_bento
from despliegue.lifecycle.pinning import PINNED_SUFFIX, pinnable
from despliegue.lifecycle.plans import packs_served_models, served_tags
from despliegue.schemas import (
    AntibioticPanelListing,
    AntibioticsRequest,
    AntibioticsResponse,
    Face,
    FaceRequest,
    FaceResponse,
    FalseTrueRequest,
    FalseTrueResponse,
    FlowersRequest,
    FlowersResponse,
    HeatFlowRequest,
    HeatFlowResponse,
    ServedModels,
    SuperResponse,
)
from despliegue.startup import check_tls_files, preflight
from despliegue.v2.routes import install as install_v2_routes

# Decision thresholds by model key; configuration loading checks every model that needs one
# has one (despliegue/registry.py says which).
THRESHOLDS: dict[str, float] = {
    model.key: float(settings().family(model.key).threshold)  # type: ignore[arg-type]
    for model in registry.models()
    if model.needs_threshold
}
PANEL = settings().panel("antibiotics")
# The families `/drift/{family}` reports on.
DRIFT_FAMILIES = families()
# The detector takes any size; images larger than this are scaled down before it sees them.
DETECTION_INPUT = ModelInput(max_side=settings().family("face_detector").max_side)

limit_malloc_arenas()  # every worker imports this module, before its thread pools start
install_log_filter()
if starts_a_server(sys.argv):
    claim_home(bentoml_home())  # before BentoML empties this home's metrics folder


async def annotated_png(image: DecodedImage, faces: Sequence[Face]) -> str:
    """The full-size image with the boxes drawn, as Base64 PNG. Encoding a large PNG takes
    seconds: it runs in a worker thread, not on the event loop."""
    assert image.original is not None, "decoded with keep_original=True"
    return await asyncio.to_thread(lambda: encode_png(annotate_image(image.original, faces)))


def with_runners(service: type) -> type:
    """One `bentoml.depends` attribute per family whose runner is a process of its own, named
    after the family (set before `@bentoml.service` reads the class). A family answered inside
    the API worker (`placement`, despliegue/registry.py) gets its runner instance in
    `__init__` instead, and its models are declared here, so `bentoml build` still packs them.
    A build (despliegue/lifecycle/pack.py) declares every runner, so the Bento records every
    tier and any family can be served apart from the same image."""
    for family in registry.FAMILIES:
        if settings().in_api(family) and not building_a_bento():
            packs_served_models(family.name, stored_only=True)(service)
        else:
            setattr(service, family.name, bentoml.depends(family.runner_class()))
    return service


def runner_in_this_process(family: registry.Family) -> Any:
    """The family's runner service, instantiated here as BentoML does for a dependency it does
    not start (`Service.__call__`): the same class, models, lifecycle watcher and `to_async`
    methods as in a runner process, called without the hop. Concurrent requests still share
    one call (the coalescer); a sync method runs in BentoML's thread pool, off the event loop."""
    return family.runner_class()()


def as_declared(runner: Any, method: str) -> typing.Callable[[list[Any]], Any]:
    """How merged request items go to a runner method: as one array when the method is declared
    to take an array (BentoML checks arguments against the declaration), else as the list."""
    function = runner.apis[method].func
    hints = typing.get_type_hints(function)
    first = next(name for name in list(hints) if name != "return")
    if hints[first] is np.ndarray:
        return np.asarray
    return list


def tagged(response: Any, tags: list[str]) -> Any:
    """A response naming every tag that answered: a request split across two runner batches
    while a canary runs or a swap happens may have two (despliegue/lifecycle/). `model_tag` is
    `model` under its deprecated name, for one release."""
    if len(tags) > 1:
        response.model = response.model_tag = ",".join(tags)
    return response


DRIFT_FAMILY_PARAMETER = {
    "name": "family",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": list(DRIFT_FAMILIES)},
}

# FastAPI's own /docs and /redoc pages load assets from a CDN: off (the UI at / is local).
catalog_app = FastAPI(title="Model catalog", docs_url=None, redoc_url=None, openapi_url=None)
# The Open Inference Protocol (KServe V2) beside the seed contracts (despliegue/v2/).
install_v2_routes(catalog_app)


@bentoml.asgi_app(catalog_app, path="/")
@bentoml.service(**settings().service_options(registry.API_SERVICE))
@with_runners
class Despliegue:
    """Every endpoint: decode, call the family's runner (coalesced), answer with the family's
    pure answer function (despliegue/answers/)."""

    @bentoml.on_deployment
    def preflight() -> None:
        """Once, when `bentoml serve` starts (not at build), before any worker: stop with one
        line naming what is wrong and the fix, if auth is on with no tokens, a served model is
        missing, unreadable or damaged (sha256), or a TLS file cannot be loaded."""
        preflight(
            registry.API_SERVICE,
            [
                lambda: token_book(settings().security.auth),
                lambda: require_models_in_store(served_tags().values()),
                check_tls_files,
            ],
        )

    def __init__(self) -> None:
        for family in registry.FAMILIES:
            if settings().in_api(family):
                setattr(self, family.name, runner_in_this_process(family))
        self.pixels_in_flight = PixelBudget(settings().limits.images.max_pixels_in_flight)
        drift = settings().drift
        self.recorder = Recorder(drift, storage_dir(drift), worker_name())
        # The runners' model cards and the answers about what is served (despliegue/catalog.py).
        self.catalog = Catalog(self.runner_models, self.recorder)
        # Every batchable runner method by model key, as the endpoints call it: concurrent
        # requests share one call (despliegue/coalescing.py); each answered call is recorded
        # for drift here, in this one place (despliegue/drift/).
        self.calls: dict[str, RunnerMethod[Any, Any]] = {
            model.key: self.monitored(
                model.key,
                pinnable(
                    model.key,
                    coalesce(
                        f"{family.service_name}.{model.method}",
                        self.runner_method(family.name, model.method, family.runner_class()),
                        settings().families[model.key].batching,
                    ),
                    self.pinned_runner_method(family, model.method),
                ),
            )
            for family in registry.FAMILIES
            for model in family.models
        }
        settle_worker_heap()

    def monitored(self, key: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        return observed(key, call, self.catalog.cards, self.recorder)

    async def runner_models(self, family: str) -> Any:
        """What a family's runner has loaded, as its `describe` method answers."""
        return await getattr(self, family).to_async.describe()

    @bentoml.on_shutdown
    async def save_drift_windows(self) -> None:
        """The live drift windows survive a restart (they are also saved periodically), with
        every answered call counted."""
        await count_pending(self.catalog.cards, self.recorder)
        self.recorder.save()

    def runner_method(self, family: str, method: str, runner: Any) -> RunnerMethod[Any, Any]:
        """A runner method reached at call time (the dependency resolves in the worker)."""
        prepare = as_declared(runner, method)
        return lambda items: getattr(getattr(self, family).to_async, method)(prepare(items))

    def pinned_runner_method(
        self, family: registry.Family, method: str
    ) -> Callable[[list[Any], str], Awaitable[Any]]:
        """The method's unbatched twin, answered by one loaded tag (a V2 infer pinned to a
        version: despliegue/lifecycle/pinning.py); it survives a runner restart as well."""
        prepare = as_declared(family.runner_class(), method)
        twin = method + PINNED_SUFFIX

        def call(items: list[Any], tag: str) -> Awaitable[Any]:
            runner = getattr(getattr(self, family.name).to_async, twin)
            name = f"{family.service_name}.{twin}"
            return surviving_restarts(name, lambda batch: runner(prepare(batch), tag=tag))(items)

        return call

    async def model_input(self, key: str) -> ModelInput:
        """The input size a CNN takes, as its model card's preprocessing records it."""
        height, width = (await self.catalog.card(key)).metadata["preprocessing"]["size"]
        return ModelInput(size=(int(height), int(width)))

    def admitted(
        self,
        sources: list[str] | list[Path],
        field: str,
        target: ModelInput,
        keep_original: bool = False,
    ) -> AbstractAsyncContextManager[list[DecodedImage]]:
        """The request's images decoded for `target`, under this worker's pixel budget."""
        return admitted_images(
            sources, field, target, self.pixels_in_flight, keep_original=keep_original
        )

    @bentoml.api(route="/heatflow", input_spec=HeatFlowRequest)
    @answers_client_errors
    async def heatflow_predict(self, sediment_thickness_m: list[float]) -> HeatFlowResponse:
        """Predict surface heat flow (mW/m²) from sediment thickness (m)."""
        heat_flow, tags = unzip(await self.calls["heatflow"](sediment_thickness_m), "heatflow")
        card = await self.catalog.card("heatflow", tags[0])
        return tagged(heat_flow_response(sediment_thickness_m, heat_flow, card), tags)

    @bentoml.api(route="/falsetrue", input_spec=FalseTrueRequest)
    @answers_client_errors
    async def falsetrue_classify(self, texts: list[str]) -> FalseTrueResponse:
        """Classify each text as 0 (False) or 1 (Real)."""
        rows, tags = unzip(await self.calls["falsetrue"](texts), "falsetrue")
        return tagged(falsetrue_response(rows, await self.catalog.card("falsetrue", tags[0])), tags)

    @bentoml.api(route="/flowers", input_spec=FlowersRequest)
    @answers_client_errors
    async def flowers_classify(self, images: list[str], top_k: int = 3) -> FlowersResponse:
        """Name the flower in each image (18 Oxford-102 classes), with the top-k classes."""
        async with self.admitted(images, "images", await self.model_input("flowers")) as decoded:
            return await self.answer_flowers(decoded, top_k)

    @bentoml.api(route="/flowers/upload")
    @answers_client_errors
    async def flowers_upload(
        self,
        images: Annotated[list[Path], ContentType("image/*")],
        top_k: Annotated[int, Field(ge=1, le=18)] = 3,
    ) -> FlowersResponse:
        """/flowers with image files uploaded as multipart/form-data (the Swagger UI's way)."""
        async with self.admitted(images, "images", await self.model_input("flowers")) as decoded:
            return await self.answer_flowers(decoded, top_k)

    async def answer_flowers(self, images: list[DecodedImage], top_k: int) -> FlowersResponse:
        answers = await self.calls["flowers"]([image.pixels for image in images])
        probabilities, tags = unzip(answers, "flowers")
        card = await self.catalog.card("flowers", tags[0])
        return tagged(flowers_response(probabilities, card, top_k, THRESHOLDS["flowers"]), tags)

    @bentoml.api(route="/face", input_spec=FaceRequest)
    @answers_client_errors
    async def face_detect(self, input_data: list[str], annotate: bool = False) -> FaceResponse:
        """Find the faces in each image: box (x, y, width, height), confidence, landmarks."""
        async with self.admitted(input_data, "input_data", DETECTION_INPUT, annotate) as decoded:
            return await self.answer_faces(decoded, annotate)

    @bentoml.api(route="/face/upload")
    @answers_client_errors
    async def face_upload(
        self, input_data: Annotated[Path, ContentType("image/*")], annotate: bool = False
    ) -> FaceResponse:
        """/face with one image file uploaded as multipart/form-data (the Swagger UI's way)."""
        async with self.admitted([input_data], "input_data", DETECTION_INPUT, annotate) as decoded:
            return await self.answer_faces(decoded, annotate)

    async def answer_faces(self, images: list[DecodedImage], annotate: bool) -> FaceResponse:
        answers = await self.calls["face_detector"]([image.pixels for image in images])
        detections, tags = unzip(answers, "face_detector")
        per_image = [
            faces_of(rows, THRESHOLDS["face_detector"], image.scale)
            for image, rows in zip(images, detections, strict=True)
        ]
        drawn = [
            await annotated_png(image, faces) if annotate else None
            for image, faces in zip(images, per_image, strict=True)
        ]
        return tagged(
            face_response(per_image, drawn, await self.catalog.card("face_detector", tags[0])), tags
        )

    @bentoml.api(route="/super", input_spec=FaceRequest)
    @answers_client_errors
    async def face_validate(self, input_data: list[str], annotate: bool = False) -> SuperResponse:
        """Detect faces, crop each, score the crops with the validation CNN: TRUE/FALSE."""
        async with self.admitted(input_data, "input_data", DETECTION_INPUT, annotate) as decoded:
            return await self.answer_super(decoded, annotate)

    @bentoml.api(route="/super/upload")
    @answers_client_errors
    async def super_upload(
        self, input_data: Annotated[Path, ContentType("image/*")], annotate: bool = False
    ) -> SuperResponse:
        """/super with one image file uploaded as multipart/form-data (the Swagger UI's way)."""
        async with self.admitted([input_data], "input_data", DETECTION_INPUT, annotate) as decoded:
            return await self.answer_super(decoded, annotate)

    async def answer_super(self, images: list[DecodedImage], annotate: bool) -> SuperResponse:
        pixels = [image.pixels for image in images]
        detections, detectors = unzip(await self.calls["face_detector"](pixels), "face_detector")
        crop_size = (await self.model_input("face_validator")).size
        assert crop_size is not None
        # Crops are cut from the image the detector saw; the answer's coordinates are the sent
        # image's (`scale`).
        seen = [faces_of(rows, THRESHOLDS["face_detector"]) for rows in detections]
        crops = crops_to_validate(pixels, seen, crop_size)
        scores, validators = unzip(
            await self.calls["face_validator"](crops) if crops else [], "face_validator"
        )
        sent = [
            faces_of(rows, THRESHOLDS["face_detector"], image.scale)
            for image, rows in zip(images, detections, strict=True)
        ]
        validated = validated_faces(sent, scores, THRESHOLDS["face_validator"])
        drawn = [
            await annotated_png(image, faces) if annotate else None
            for image, faces in zip(images, validated, strict=True)
        ]
        verdicts = super_response(
            validated,
            drawn,
            THRESHOLDS["face_validator"],
            await self.catalog.card("face_detector", detectors[0]),
            await self.catalog.card("face_validator", validators[0] if validators else None),
        )
        return tagged(verdicts, validators)

    async def panel(self) -> dict[str, ModelCard]:
        """The served antibiotic models by code (not their canaries or shadows)."""
        cards = await self.catalog.cards("antibiotics")
        return panel_of([card for card in cards if card.lane == "served"], PANEL)

    @bentoml.api(route="/antibiotics", input_spec=AntibioticsRequest)
    @answers_client_errors
    async def antibiotics_predict(
        self, features: list[list[float]], codes: list[str] | None = None
    ) -> AntibioticsResponse:
        """S / I / R for each feature vector, from each requested antibiotic's model."""
        served = await self.panel()
        wanted = requested_codes(served, PANEL, features, codes)
        answered = await self.calls["antibiotics"](panel_rows(wanted, features))
        # Each code's answers, and the card of the model that gave them (served or canary).
        per_code, answering = [], {}
        for start, code in zip(range(0, len(answered), len(features)), wanted, strict=True):
            answers, tags = unzip(answered[start : start + len(features)], f"antibiotics.{code}")
            per_code += answers
            answering[code] = await self.catalog.card(f"antibiotics.{code}", tags[0])
        return antibiotics_response(answering, wanted, len(features), per_code)

    # The family is read from the path, not declared as a parameter: FastAPI would document a
    # 422 of its own for it, which this service never answers (any text is a family or a 404).
    @catalog_app.get("/drift/{family}", openapi_extra={"parameters": [DRIFT_FAMILY_PARAMETER]})
    async def get_drift(self, request: Request) -> Any:
        """Drift of a family's served models: per feature the test, p-value, PSI, threshold
        and verdict, against each model's baseline (see docs/operations.md)."""
        try:
            return await self.catalog.drift_of(request.path_params["family"])
        except ClientError as exc:
            return exc.to_response()

    @bentoml.api(route="/drift")
    @answers_client_errors
    async def drift_report(
        self, family: Annotated[str, Field(examples=["heatflow"], description="a model family")]
    ) -> dict[str, Any]:
        """Drift of a family, as GET /drift/{family} gives it (for the Python client)."""
        return await self.catalog.drift_of(family)

    # The catalog twice: GET routes for browsers and curl, and service APIs (POST) so that
    # bentoml.SyncHTTPClient has a method for each (it only calls APIs, never mounted routes).
    @catalog_app.get("/antibiotics", response_model=AntibioticPanelListing)
    async def get_antibiotic_panel(self) -> AntibioticPanelListing:
        """The antibiotic panel: one model per code, its input length, classes and origin."""
        return panel_listing(await self.panel(), PANEL)

    @bentoml.api(route="/antibiotics/panel")
    async def antibiotic_panel(self) -> AntibioticPanelListing:
        """The antibiotic panel, as GET /antibiotics gives it (for the Python client)."""
        return panel_listing(await self.panel(), PANEL)

    @catalog_app.get("/models", response_model=ServedModels)
    async def get_models(self) -> ServedModels:
        """The models being served: tag, family, framework, reference or imported, metadata."""
        return await self.catalog.model_listing()

    @bentoml.api(route="/models")
    async def served_models(self) -> ServedModels:
        """The models being served, as GET /models gives them (for the Python client)."""
        return await self.catalog.model_listing()

    # The family is read from the path, not declared as a parameter: FastAPI would add its own
    # 422 answer to the document, and every error here has the product's error body.
    @catalog_app.get(
        "/models/{family}/compare",
        response_model=ShadowStats,
        openapi_extra={
            "parameters": [
                {
                    "name": "family",
                    "in": "path",
                    "required": True,
                    "description": "heatflow, falsetrue, flowers, face_detector, "
                    "face_validator or antibiotics.<CODE>",
                    "schema": {"type": "string", "examples": ["heatflow"]},
                }
            ]
        },
    )
    async def get_comparison(self, request: Request) -> ShadowStats | Response:
        """The shadow model's answers compared with the served model's: agreement rate and
        mean absolute difference (since the runner loaded this pair)."""
        return await self.catalog.comparison(request.path_params["family"])


install_edge(Despliegue, catalog_app, settings())
