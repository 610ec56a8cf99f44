"""Despliegue: the public HTTP API over every model family.

A request goes: HTTP -> this service (size limit, pydantic validation) -> the family's runner
service in `runners/` (adaptive batching, model call) -> a response schema that names the model
tag that answered. No model is loaded here; each runner is its own process, reached through
`bentoml.depends`.

Serve it with `bentoml serve` (see README.md); the Swagger UI is at `/`.
"""

from __future__ import annotations

import asyncio

import bentoml
import numpy as np
from fastapi import FastAPI

from despliegue.artifacts import ModelCard, require_models_in_store
from despliegue.audit import AuditLog
from despliegue.auth import BearerAuth, token_book
from despliegue.config import settings
from despliegue.docs_ui import PrivateDocs
from despliegue.errors import install_log_filter
from despliegue.http import BodySizeLimit, ContentTypeGuard
from despliegue.schemas import (
    FalseTrueRequest,
    FalseTrueResponse,
    HeatFlowRequest,
    HeatFlowResponse,
    ServedModels,
)
from runners.falsetrue import FalseTrueClassifier
from runners.heatflow import HeatFlowRegressor

# Attribute names of the runner dependencies below, one per model family.
FAMILIES = ("heatflow", "falsetrue")

install_log_filter()
catalog = FastAPI(title="Model catalog")


@bentoml.asgi_app(catalog, path="/")
@bentoml.service(**settings().service_options("Despliegue"))
class Despliegue:
    heatflow = bentoml.depends(HeatFlowRegressor)
    falsetrue = bentoml.depends(FalseTrueClassifier)

    @bentoml.on_deployment
    def preflight() -> None:
        """Once, when `bentoml serve` starts (not at build): stop with a message naming what is
        wrong, if auth is on with no tokens or a configured model is not in the store."""
        token_book(settings().security.auth)
        require_models_in_store(family.tag for family in settings().families.values())

    def __init__(self) -> None:
        self._cards: dict[str, list[ModelCard]] = {}

    async def cards(self, family: str) -> list[ModelCard]:
        """The model cards of a family's runner (its attribute here), asked once, then kept."""
        if family not in self._cards:
            described = await getattr(self, family).to_async.describe()
            self._cards[family] = [ModelCard.model_validate(card) for card in described]
        return self._cards[family]

    async def tag(self, family: str) -> str:
        """The tag that answers for a single-model family."""
        return (await self.cards(family))[0].tag

    @bentoml.api(route="/heatflow", input_spec=HeatFlowRequest)
    async def heatflow_predict(self, sediment_thickness_m: list[float]) -> HeatFlowResponse:
        """Predict surface heat flow (mW/m²) from sediment thickness (m)."""
        thickness = np.asarray(sediment_thickness_m, dtype=float)
        heat_flow = await self.heatflow.to_async.predict(thickness)
        return HeatFlowResponse(
            sediment_thickness_m=thickness.tolist(),
            heat_flow_mw_m2=np.round(heat_flow, 3).tolist(),
            model=await self.tag("heatflow"),
        )

    @bentoml.api(route="/falsetrue", input_spec=FalseTrueRequest)
    async def falsetrue_classify(self, texts: list[str]) -> FalseTrueResponse:
        """Classify each text as 0 (False) or 1 (Real)."""
        rows = await self.falsetrue.to_async.classify(texts)
        return FalseTrueResponse(
            is_falsetrue=[int(label) for label in rows[:, 0]],
            probability_real=[None if np.isnan(p) else round(float(p), 4) for p in rows[:, 1]],
            model=await self.tag("falsetrue"),
        )

    @catalog.get("/models", response_model=ServedModels)
    async def served_models(self) -> ServedModels:
        """The models being served: tag, family, framework, reference or imported, metadata."""
        per_family = await asyncio.gather(*(self.cards(family) for family in FAMILIES))
        return ServedModels(models=[card for cards in per_family for card in cards])


# The first added is the outermost: the audit line covers refusals by auth and size limits.
Despliegue.add_asgi_middleware(AuditLog, audit=settings().security.audit)
Despliegue.add_asgi_middleware(BearerAuth, auth=settings().security.auth)
Despliegue.add_asgi_middleware(PrivateDocs, auth=settings().security.auth)
Despliegue.add_asgi_middleware(BodySizeLimit, max_body_bytes=settings().limits.max_body_bytes)
Despliegue.add_asgi_middleware(
    ContentTypeGuard,
    json_routes=frozenset(
        api.route
        for api in Despliegue.apis.values()
        if api.input_spec.mime_type() == "application/json"
    ),
)
