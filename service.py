"""Despliegue: the public HTTP API over every model family.

A request goes: HTTP -> this service (size limit, pydantic validation) -> the family's runner
service in `runners/` (adaptive batching, model call) -> a response schema that names the model
tag that answered. No model is loaded here; each runner is its own process, reached through
`bentoml.depends`.

Serve it with `bentoml serve` (see README.md); the Swagger UI is at `/`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import bentoml
import numpy as np
from fastapi import FastAPI

from despliegue.artifacts import ModelCard
from despliegue.config import settings
from despliegue.errors import ClientError, answers_client_errors, install_log_filter
from despliegue.http import BodySizeLimit
from despliegue.schemas import (
    AntibioticPanelListing,
    AntibioticResult,
    AntibioticsRequest,
    AntibioticsResponse,
    FalseTrueRequest,
    FalseTrueResponse,
    HeatFlowRequest,
    HeatFlowResponse,
    PanelEntry,
    Prediction,
    ServedModels,
)
from runners.antibiotics import PANEL, AntibioticPanel, PanelRow
from runners.falsetrue import FalseTrueClassifier
from runners.heatflow import HeatFlowRegressor

# Attribute names of the runner dependencies below, one per model family.
FAMILIES = ("heatflow", "falsetrue", "antibiotics")

install_log_filter()
catalog = FastAPI(title="Model catalog")


@bentoml.asgi_app(catalog, path="/")
@bentoml.service(**settings().service_options("Despliegue"))
class Despliegue:
    heatflow = bentoml.depends(HeatFlowRegressor)
    falsetrue = bentoml.depends(FalseTrueClassifier)
    antibiotics = bentoml.depends(AntibioticPanel)

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
        wanted = list(dict.fromkeys(codes)) if codes else list(panel)
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
        probabilities = iter(await self.antibiotics.to_async.susceptibility(rows))
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

    @catalog.get("/antibiotics", response_model=AntibioticPanelListing)
    async def antibiotic_panel(self) -> AntibioticPanelListing:
        """The antibiotic panel: one model per code, its input length, classes and origin."""
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

    @catalog.get("/models", response_model=ServedModels)
    async def served_models(self) -> ServedModels:
        """The models being served: tag, family, framework, reference or imported, metadata."""
        per_family = await asyncio.gather(*(self.cards(family) for family in FAMILIES))
        return ServedModels(models=[card for cards in per_family for card in cards])


Despliegue.add_asgi_middleware(BodySizeLimit, max_body_bytes=settings().limits.max_body_bytes)
