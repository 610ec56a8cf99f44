"""Despliegue: the public HTTP API over every model family.

A request goes: HTTP -> this service (size limit, pydantic validation, decoding) -> the
family's runner service in `runners/` (adaptive batching, model call) -> a response schema that
names the model tag that answered. No model is loaded here; each runner is its own process,
reached through `bentoml.depends`, and concurrent requests share one call to it
(despliegue/coalescing.py).

Serve it with `bentoml serve` (see README.md); the Swagger UI is at `/`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import Field

from despliegue.artifacts import ModelCard, bentoml_home, require_models_in_store, served_tags
from despliegue.audit import AuditLog
from despliegue.auth import (
    DOCS_PATHS,
    DOCS_PREFIXES,
    PROBES,
    BearerAuth,
    auth_enabled,
    token_book,
)
from despliegue.coalescing import coalesce
from despliegue.config import settings
from despliegue.docs_ui import PrivateDocs, api_operations
from despliegue.errors import (
    ClientError,
    ClientErrorWording,
    answers_client_errors,
    install_log_filter,
)
from despliegue.faces import annotate_image, crop, faces_of
from despliegue.heap import freeze_startup_heap
from despliegue.home_lock import claim_home, starts_a_server
from despliegue.http import (
    BodySizeLimit,
    ContentTypeGuard,
    MethodNotAllowed,
    UploadFieldGuard,
    form_fields,
)
from despliegue.http_server import configure_http_server
from despliegue.images import (
    DecodedImage,
    ModelInput,
    PixelBudget,
    admitted_images,
    encode_png,
    resize,
)
from despliegue.probes import Probes
from despliegue.schemas import (
    AntibioticPanelListing,
    AntibioticResult,
    AntibioticsRequest,
    AntibioticsResponse,
    Face,
    FaceRequest,
    FaceResponse,
    FalseTrueRequest,
    FalseTrueResponse,
    FlowerAnswer,
    FlowerClass,
    FlowersRequest,
    FlowersResponse,
    HeatFlowRequest,
    HeatFlowResponse,
    ImageFaces,
    ImageVerdict,
    PanelEntry,
    Prediction,
    ServedModels,
    SuperResponse,
    ValidatedFace,
)
from despliegue.startup import check_tls_files, preflight
from runners.antibiotics import PANEL, AntibioticPanel, PanelRow
from runners.faces import FaceAnalyzer
from runners.falsetrue import FalseTrueClassifier
from runners.flowers import FlowerClassifier
from runners.heatflow import HeatFlowRegressor

# Attribute names of the runner dependencies below, one per runner.
FAMILIES = ("heatflow", "falsetrue", "flowers", "faces", "antibiotics")
UNIDENTIFIED_FLOWER = "Flor no identificada"
# Thresholds are required for these families (checked when the configuration is loaded).
FLOWER_THRESHOLD = float(settings().family("flowers").threshold)  # type: ignore[arg-type]
DETECTION_THRESHOLD = float(settings().family("face_detector").threshold)  # type: ignore[arg-type]
VALIDATION_THRESHOLD = float(settings().family("face_validator").threshold)  # type: ignore[arg-type]
# The detector takes any size; images larger than this are scaled down before it sees them.
DETECTION_INPUT = ModelInput(max_side=settings().family("face_detector").max_side)

install_log_filter()
if starts_a_server(sys.argv):
    claim_home(bentoml_home())  # before BentoML empties this home's metrics folder


async def annotated_png(image: DecodedImage, faces: Sequence[Face]) -> str:
    """The full-size image with the boxes drawn, as Base64 PNG. Encoding a large PNG takes
    seconds: it runs in a worker thread, not on the event loop."""
    assert image.original is not None, "decoded with keep_original=True"
    return await asyncio.to_thread(lambda: encode_png(annotate_image(image.original, faces)))


def models_for_length(panel: dict[str, ModelCard], features: list[list[float]]) -> list[str]:
    """What a request without `codes` asks: every panel model whose input length is the
    vectors' length (the panel may mix models of different lengths). All vectors of such a
    request must have one length; if no model takes it, 422 lists the lengths by code."""
    length = len(features[0])
    for index, vector in enumerate(features):
        if len(vector) != length:
            raise ClientError(
                ["features", index],
                f"without codes, every vector must have the same length (vector 0 has "
                f"{length} values, this one {len(vector)}): send codes, or one length per request",
            )
    lengths = {code: int(card.metadata["input_length"]) for code, card in panel.items()}
    matching = [code for code, expected in lengths.items() if expected == length]
    if not matching:
        listed = ", ".join(f"{code}: {expected}" for code, expected in sorted(lengths.items()))
        raise ClientError(
            ["features", 0],
            f"no antibiotic model takes {length} values per vector; input lengths by code: "
            f"{listed}",
        )
    return matching


# FastAPI's own /docs and /redoc pages load assets from a CDN: off (the UI at / is local).
catalog = FastAPI(title="Model catalog", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.asgi_app(catalog, path="/")
@bentoml.service(**settings().service_options("Despliegue"))
class Despliegue:
    heatflow = bentoml.depends(HeatFlowRegressor)
    falsetrue = bentoml.depends(FalseTrueClassifier)
    flowers = bentoml.depends(FlowerClassifier)
    faces = bentoml.depends(FaceAnalyzer)
    antibiotics = bentoml.depends(AntibioticPanel)

    @bentoml.on_deployment
    def preflight() -> None:
        """Once, when `bentoml serve` starts (not at build), before any worker: stop with one
        line naming what is wrong and the fix, if auth is on with no tokens, a served model is
        missing, unreadable or damaged (sha256), or a TLS file cannot be loaded."""
        preflight(
            "Despliegue",
            [
                lambda: token_book(settings().security.auth),
                lambda: require_models_in_store(served_tags().values()),
                check_tls_files,
            ],
        )

    def __init__(self) -> None:
        self._cards: dict[str, list[ModelCard]] = {}
        self.pixels_in_flight = PixelBudget(settings().limits.images.max_pixels_in_flight)
        # Every batchable runner method, as the endpoints call it: concurrent requests share
        # one call (despliegue/coalescing.py). The lambdas reach the runner at call time.
        families = settings().families
        self.predict_heat_flow = coalesce(
            "HeatFlowRegressor.predict",
            lambda values: self.heatflow.to_async.predict(np.asarray(values, dtype=float)),
            families["heatflow"].batching,
        )
        self.classify_texts = coalesce(
            "FalseTrueClassifier.classify",
            lambda texts: self.falsetrue.to_async.classify(texts),
            families["falsetrue"].batching,
        )
        self.classify_flowers = coalesce(
            "FlowerClassifier.classify",
            lambda images: self.flowers.to_async.classify(images),
            families["flowers"].batching,
        )
        self.detect_faces = coalesce(
            "FaceAnalyzer.detect",
            lambda images: self.faces.to_async.detect(images),
            families["face_detector"].batching,
        )
        self.validate_faces = coalesce(
            "FaceAnalyzer.validate",
            lambda crops: self.faces.to_async.validate(crops),
            families["face_validator"].batching,
        )
        self.susceptibility = coalesce(
            "AntibioticPanel.susceptibility",
            lambda rows: self.antibiotics.to_async.susceptibility(rows),
            families["antibiotics"].batching,
        )
        freeze_startup_heap()

    async def cards(self, family: str) -> list[ModelCard]:
        """The model cards of a family's runner (its attribute here), asked once, then kept."""
        if family not in self._cards:
            described = await getattr(self, family).to_async.describe()
            self._cards[family] = [ModelCard.model_validate(card) for card in described]
        return self._cards[family]

    async def tag(self, runner: str, family: str | None = None) -> str:
        """The tag a runner serves for a family (its only model when `family` is not given)."""
        cards = await self.cards(runner)
        return next(card.tag for card in cards if family is None or card.family == family)

    async def card(self, runner: str, family: str) -> ModelCard:
        return next(card for card in await self.cards(runner) if card.family == family)

    async def model_input(self, runner: str, family: str) -> ModelInput:
        """The input size a CNN takes, as its model card's preprocessing records it."""
        height, width = (await self.card(runner, family)).metadata["preprocessing"]["size"]
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
        # The validated list goes to the coalescer as is: the runner call makes one array of
        # every merged request (an array here would be split back into numpy scalars).
        heat_flow = np.asarray(await self.predict_heat_flow(sediment_thickness_m), dtype=float)
        return HeatFlowResponse(
            sediment_thickness_m=sediment_thickness_m,
            heat_flow_mw_m2=np.round(heat_flow, 3).tolist(),
            model=await self.tag("heatflow"),
        )

    @bentoml.api(route="/falsetrue", input_spec=FalseTrueRequest)
    @answers_client_errors
    async def falsetrue_classify(self, texts: list[str]) -> FalseTrueResponse:
        """Classify each text as 0 (False) or 1 (Real)."""
        rows = np.asarray(await self.classify_texts(texts), dtype=float)
        return FalseTrueResponse(
            is_falsetrue=[int(label) for label in rows[:, 0]],
            probability_real=[None if np.isnan(p) else round(float(p), 4) for p in rows[:, 1]],
            model=await self.tag("falsetrue"),
        )

    @bentoml.api(route="/flowers", input_spec=FlowersRequest)
    @answers_client_errors
    async def flowers_classify(self, images: list[str], top_k: int = 3) -> FlowersResponse:
        """Name the flower in each image (18 Oxford-102 classes), with the top-k classes."""
        async with self.admitted(images, "images", await self.flower_input()) as decoded:
            return await self.answer_flowers(decoded, top_k)

    @bentoml.api(route="/flowers/upload")
    @answers_client_errors
    async def flowers_upload(
        self,
        images: Annotated[list[Path], ContentType("image/*")],
        top_k: Annotated[int, Field(ge=1, le=18)] = 3,
    ) -> FlowersResponse:
        """/flowers with image files uploaded as multipart/form-data (the Swagger UI's way)."""
        async with self.admitted(images, "images", await self.flower_input()) as decoded:
            return await self.answer_flowers(decoded, top_k)

    async def flower_input(self) -> ModelInput:
        return await self.model_input("flowers", "flowers")

    async def answer_flowers(self, images: list[DecodedImage], top_k: int) -> FlowersResponse:
        probabilities = await self.classify_flowers([image.pixels for image in images])
        card = await self.card("flowers", "flowers")
        classes = card.metadata["classes"]
        answers = []
        for row in probabilities:
            ranked = np.argsort(row)[::-1][:top_k]
            top = [
                FlowerClass(
                    class_id=classes[i]["id"],
                    name=classes[i]["name"],
                    confidence=round(float(row[i]), 4),
                )
                for i in ranked
            ]
            known = top[0].confidence >= FLOWER_THRESHOLD
            answers.append(
                FlowerAnswer(
                    class_id=top[0].class_id if known else None,
                    name=top[0].name if known else UNIDENTIFIED_FLOWER,
                    confidence=top[0].confidence,
                    top_k=top,
                )
            )
        return FlowersResponse(predictions=answers, threshold=FLOWER_THRESHOLD, model=card.tag)

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
        detections = await self.detect_faces([image.pixels for image in images])
        answers = []
        for image, rows in zip(images, detections, strict=True):
            faces = faces_of(rows, DETECTION_THRESHOLD, image.scale)
            drawn = await annotated_png(image, faces) if annotate else None
            answers.append(ImageFaces(faces=faces, annotated_png=drawn))
        return FaceResponse(images=answers, model=await self.tag("faces", "face_detector"))

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
        detections = await self.detect_faces([image.pixels for image in images])
        crop_size = (await self.model_input("faces", "face_validator")).size
        assert crop_size is not None
        # Every face of every image goes to the validation CNN in one call (one batch), each
        # crop cut from the image the detector saw and sized as the validator takes it.
        crops = [
            resize(crop(image.pixels, face.box), crop_size)
            for image, rows in zip(images, detections, strict=True)
            for face in faces_of(rows, DETECTION_THRESHOLD)
        ]
        scores = await self.validate_faces(crops) if crops else []
        per_image = [
            faces_of(rows, DETECTION_THRESHOLD, image.scale)
            for image, rows in zip(images, detections, strict=True)
        ]
        verdicts, start = [], 0
        for image, faces in zip(images, per_image, strict=True):
            own, start = scores[start : start + len(faces)], start + len(faces)
            validated = [
                ValidatedFace(
                    **face.model_dump(), score=round(score, 4), result=score >= VALIDATION_THRESHOLD
                )
                for face, score in zip(faces, own, strict=True)
            ]
            drawn = await annotated_png(image, validated) if annotate else None
            verdicts.append(
                ImageVerdict(
                    result=any(face.result for face in validated),
                    score=max((face.score for face in validated), default=0.0),
                    faces=validated,
                    annotated_png=drawn,
                )
            )
        return SuperResponse(
            images=verdicts,
            threshold=VALIDATION_THRESHOLD,
            detector=await self.tag("faces", "face_detector"),
            model=await self.tag("faces", "face_validator"),
        )

    async def panel(self) -> dict[str, ModelCard]:
        """The served antibiotic models by code."""
        cards = await self.cards("antibiotics")
        return {PANEL.code_of(card.tag.partition(":")[0]) or card.tag: card for card in cards}

    @bentoml.api(route="/antibiotics", input_spec=AntibioticsRequest)
    @answers_client_errors
    async def antibiotics_predict(
        self, features: list[list[float]], codes: list[str] | None = None
    ) -> AntibioticsResponse:
        """S / I / R for each feature vector, from each requested antibiotic's model."""
        panel = await self.panel()
        if not panel:
            raise ClientError(
                ["codes"],
                "no antibiotic model is served: import one (python save_models.py import "
                f"{PANEL.model_name('CODE')} SOURCE) or build the reference panel, then restart",
                status=HTTPStatus.NOT_FOUND,
            )
        wanted = list(dict.fromkeys(codes)) if codes else models_for_length(panel, features)
        for index, code in enumerate(wanted):
            if code not in panel:
                raise ClientError(
                    ["codes", index],
                    f"unknown antibiotic {code!r}; available: {', '.join(sorted(panel))}",
                )
        for code in wanted:
            expected = int(panel[code].metadata["input_length"])
            for index, vector in enumerate(features):
                if len(vector) != expected:
                    raise ClientError(
                        ["features", index],
                        f"{panel[code].tag} ({code}) expects {expected} values, got {len(vector)}",
                    )
        rows = [PanelRow(code=code, features=vector) for code in wanted for vector in features]
        probabilities = iter(await self.susceptibility(rows))
        results = []
        for code in wanted:
            card = panel[code]
            classes = card.metadata["classes"]
            predictions = []
            for _ in features:
                p = next(probabilities)
                by_class = {c: round(float(v), 4) for c, v in zip(classes, p, strict=True)}
                predictions.append(
                    Prediction(predicted_class=classes[int(np.argmax(p))], probabilities=by_class)
                )
            results.append(
                AntibioticResult(
                    code=code,
                    model=card.tag,
                    version=card.tag.partition(":")[2],
                    registered_version=card.labels.get("mlflow_version"),
                    predictions=predictions,
                )
            )
        return AntibioticsResponse(results=results)

    async def panel_listing(self) -> AntibioticPanelListing:
        entries = [
            PanelEntry(
                code=code,
                model=card.tag,
                version=card.tag.partition(":")[2],
                input_length=int(card.metadata["input_length"]),
                classes=card.metadata["classes"],
                features=card.metadata.get("features"),
                preprocessing=(card.metadata.get("preprocessing") or {}).get("kind", "none"),
                reference=card.reference,
                source={k: v for k, v in card.labels.items() if k not in {"family", "reference"}},
            )
            for code, card in sorted((await self.panel()).items())
        ]
        return AntibioticPanelListing(model_pattern=PANEL.model_pattern, antibiotics=entries)

    async def model_listing(self) -> ServedModels:
        per_family = await asyncio.gather(*(self.cards(family) for family in FAMILIES))
        return ServedModels(models=[card for cards in per_family for card in cards])

    # The catalog twice: GET routes for browsers and curl, and service APIs (POST) so that
    # bentoml.SyncHTTPClient has a method for each (it only calls APIs, never mounted routes).
    @catalog.get("/antibiotics", response_model=AntibioticPanelListing)
    async def get_antibiotic_panel(self) -> AntibioticPanelListing:
        """The antibiotic panel: one model per code, its input length, classes and origin."""
        return await self.panel_listing()

    @bentoml.api(route="/antibiotics/panel")
    async def antibiotic_panel(self) -> AntibioticPanelListing:
        """The antibiotic panel, as GET /antibiotics gives it (for the Python client)."""
        return await self.panel_listing()

    @catalog.get("/models", response_model=ServedModels)
    async def get_models(self) -> ServedModels:
        """The models being served: tag, family, framework, reference or imported, metadata."""
        return await self.model_listing()

    @bentoml.api(route="/models")
    async def served_models(self) -> ServedModels:
        """The models being served, as GET /models gives them (for the Python client)."""
        return await self.model_listing()


# The first added is the outermost. Probes come first: answered at once, before auth, audit
# and limits (despliegue/probes.py). The audit line covers refusals by auth, size limits and
# content checks.
Despliegue.add_asgi_middleware(
    Probes, service=Despliegue, auth_on=auth_enabled(settings().security.auth)
)
Despliegue.add_asgi_middleware(AuditLog, audit=settings().security.audit)
Despliegue.add_asgi_middleware(BearerAuth, auth=settings().security.auth)
Despliegue.add_asgi_middleware(
    PrivateDocs, auth=settings().security.auth, api_paths=api_operations(Despliegue)
)
Despliegue.add_asgi_middleware(BodySizeLimit, max_body_bytes=settings().limits.max_body_bytes)
Despliegue.add_asgi_middleware(
    ContentTypeGuard,
    media_types={api.route: api.input_spec.mime_type() for api in Despliegue.apis.values()},
)
Despliegue.add_asgi_middleware(
    UploadFieldGuard,
    forms={
        api.route: form_fields(api.input_spec, api.input_spec.multipart_fields)
        for api in Despliegue.apis.values()
        if api.input_spec.mime_type() == "multipart/form-data"
    },
    max_body_bytes=settings().limits.max_body_bytes,
)


def catalog_operations() -> dict[str, dict]:
    """The catalog app's paths and their operations, as its OpenAPI document lists them."""
    from fastapi.openapi.utils import get_openapi

    return get_openapi(title=catalog.title, version="1", routes=catalog.routes)["paths"]


def shared_paths() -> dict[str, frozenset[str]]:
    """Paths that both a BentoML API and a catalog route serve, with every method they take."""
    api_routes = {api.route for api in Despliegue.apis.values()}
    return {
        path: frozenset({"POST", *(method.upper() for method in operations)})
        | ({"HEAD"} if "get" in operations else set())
        for path, operations in catalog_operations().items()
        if path in api_routes
    }


Despliegue.add_asgi_middleware(MethodNotAllowed, allowed=shared_paths())
configure_http_server(
    head_timeout_s=settings().limits.request_head_timeout_s,
    trusted_proxies=settings().security.trusted_proxies,
    metric_paths=frozenset({*PROBES, *DOCS_PATHS, "/metrics", *catalog_operations()}),
    metric_prefixes=DOCS_PREFIXES,
)
Despliegue.add_asgi_middleware(ClientErrorWording)
