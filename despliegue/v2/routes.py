"""The Open Inference Protocol's (KServe V2) REST routes, added to the service's catalog app.

Server live/ready/metadata, model ready/metadata and infer, for every served model by its store
name, at the served version or any loaded one (canary, shadow). A route only translates: the
model's cards come from the catalog (what `GET /models` shows), an infer call is answered by the
seed endpoint's method (despliegue/v2/models.py), tensors are read and written by
despliegue/v2/protocol.py. The edge in front (auth scopes, audit, body limits) is the same as
for every route; `BearerAuth` asks despliegue/v2/naming.py for a V2 path's scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any

import bentoml
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from despliegue import __version__, registry
from despliegue.contracts import ModelCard
from despliegue.errors import ClientError
from despliegue.lifecycle.pinning import pinned_to
from despliegue.v2.naming import V2_TAG, model_key, signature
from despliegue.v2.protocol import HEADER_LENGTH, V2Error, encode_response, parse_infer_request

SERVER_NAME = "despliegue"
EXTENSIONS = ["binary_tensor_data"]
READY_WITHIN_S = 5.0

NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The model's store name: `heatflow_svr`, `falsetrue_classifier`, "
    "`flower_classifier`, `face_detector`, `face_validator` or `modelo_<CODE>_NM`",
    "example": "heatflow_svr",
    "schema": {"type": "string", "examples": ["heatflow_svr"]},
}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "A loaded version of the model (served, canary or shadow; GET /models)",
    "schema": {"type": "string"},
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {
                    "inputs": [
                        {
                            "name": "sediment_thickness_m",
                            "datatype": "FP64",
                            "shape": [3],
                            "data": [250.0, 1500.0, 6000.0],
                        }
                    ]
                },
            },
        },
        "description": "Named input tensors in JSON; or, in the binary-data extension, the JSON "
        "header then the raw tensors, the header's length in Inference-Header-Content-Length",
    }
}

BINARY_ANSWER = {
    "description": "The output tensors: JSON, or (outputs asked in binary) the JSON header then "
    "the raw tensors, its length in the Inference-Header-Content-Length header",
    "content": {"application/json": {}, "application/octet-stream": {}},
}


def current_service() -> Any:
    return bentoml.get_current_service()


async def loaded_cards(service: Any, name: str, version: str | None = None) -> list[ModelCard]:
    """The cards of the loaded models named `name` (one version, if given); 404 if none."""
    key = model_key(name)
    if key is None:
        raise V2Error(["model"], f"{name!r} is not a served model", HTTPStatus.NOT_FOUND)
    cards = [
        card
        for card in await service.catalog.cards(registry.family_of(key).name)
        if card.tag.partition(":")[0].lower() == name.lower()
    ]
    if not cards:
        raise V2Error(["model"], f"{name!r} is not loaded", HTTPStatus.NOT_FOUND)
    if version is None:
        return cards
    pinned = [card for card in cards if card.tag.partition(":")[2] == version]
    if not pinned:
        loaded = ", ".join(card.tag.partition(":")[2] for card in cards)
        raise V2Error(
            ["version"],
            f"version {version!r} of {name!r} is not loaded; loaded: {loaded}",
            HTTPStatus.NOT_FOUND,
        )
    return pinned


async def pinned_answer(
    service: Any, key: str, name: str, version: str, card: ModelCard, answer: Awaitable[Any]
) -> Any:
    """`answer` given by the loaded version `version` of model `key` alone, whichever lane
    holds it (despliegue/lifecycle/pinning.py); 404 if a swap took it away meanwhile."""
    try:
        with pinned_to(key, card.tag):
            return await answer
    except ClientError:
        raise
    except Exception:
        await loaded_cards(service, name, version)  # the protocol's 404 if it is gone now
        raise


def served_first(cards: list[ModelCard]) -> ModelCard:
    return next((card for card in cards if card.lane in {None, "served"}), cards[0])


def model_metadata(name: str, cards: list[ModelCard], version: str | None) -> dict[str, Any]:
    """Typed metadata from the model card: the store name, its loaded versions, the framework,
    the tensors (a panel model's lengths and classes from its card)."""
    card = served_first(cards)
    spec = signature(model_key(name) or "")
    return {
        "name": card.tag.partition(":")[0],
        "versions": [version] if version else [c.tag.partition(":")[2] for c in cards],
        "platform": card.framework,
        "inputs": spec.input_specs(card),
        "outputs": spec.output_specs(card),
    }


def install(app: FastAPI) -> None:
    """Add the V2 routes to the service's catalog app (handlers get the service instance)."""
    service = Depends(current_service)

    def route(path: str, method: str, summary: str, **extra: Any) -> Any:
        return getattr(app, method)(path, tags=[V2_TAG], summary=summary, **extra)

    @route("/v2", "get", "Server metadata", operation_id="v2_server_metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @route("/v2/health/live", "get", "Server live", operation_id="v2_server_live")
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @route(
        "/v2/health/ready",
        "get",
        "Server ready: every family's runner answers",
        operation_id="v2_server_ready",
    )
    async def server_ready(self: Any = service) -> Response:
        try:
            await asyncio.wait_for(self.catalog.model_listing(), READY_WITHIN_S)
        except Exception:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    async def metadata(self: Any, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        try:
            cards = await loaded_cards(self, name, version)
        except ClientError as exc:
            return exc.to_response()
        return JSONResponse(model_metadata(name, cards, version))

    async def ready(self: Any, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        try:
            await loaded_cards(self, name, version)
        except ClientError as exc:
            return exc.to_response()
        return JSONResponse({"name": name, "ready": True})

    async def infer(self: Any, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        try:
            card = served_first(await loaded_cards(self, name, version))
            parsed = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH))
            key = model_key(name) or ""
            answer = signature(key).answer
            if version is None:  # the everyday path: canary share and shadow as configured
                answered = await answer(self, parsed, card)
            else:
                answered = await pinned_answer(
                    self, key, name, version, card, answer(self, parsed, card)
                )
            if isinstance(answered, Response):
                return answered
            body, headers = encode_response(
                card.tag.partition(":")[0], answered.tag.partition(":")[2], parsed, answered.outputs
            )
        except ClientError as exc:
            return exc.to_response()
        return Response(body, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        parameters = [NAME, VERSION] if "{version}" in prefix else [NAME]
        pinned = " (one version)" if "{version}" in prefix else ""
        kind = "v2_model_version" if "{version}" in prefix else "v2_model"

        async def metadata_route(request: Request, self: Any = service) -> Response:
            return await metadata(self, request)

        async def ready_route(request: Request, self: Any = service) -> Response:
            return await ready(self, request)

        async def infer_route(request: Request, self: Any = service) -> Response:
            return await infer(self, request)

        route(
            prefix,
            "get",
            f"Model metadata{pinned}: typed inputs and outputs",
            operation_id=f"{kind}_metadata",
            openapi_extra={"parameters": parameters},
        )(metadata_route)
        route(
            f"{prefix}/ready",
            "get",
            f"Model ready{pinned}",
            operation_id=f"{kind}_ready",
            openapi_extra={"parameters": parameters},
        )(ready_route)
        route(
            f"{prefix}/infer",
            "post",
            f"Infer{pinned}: named tensors in, named tensors out (JSON or binary)",
            operation_id=f"{kind}_infer",
            responses={200: BINARY_ANSWER},
            openapi_extra={"parameters": parameters, **INFER_BODY},
        )(infer_route)
