"""What the API worker knows of the served models: each runner's cards, kept until the lifecycle
state changes, and the catalog answers built from them (`GET /models` with its monitoring,
the shadow comparison, `GET /drift/{family}`).

One object per API worker (`Catalog`), held by the service (service.py). It asks a runner for
its cards (`describe`) only when it has none, when the lifecycle state file changed and the
runner has not yet reported the change, or when an answer names a tag it has not seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

from despliegue import registry
from despliegue.contracts import ModelCard, RunnerModels, ShadowStats
from despliegue.drift.capture import families as drift_families
from despliegue.drift.capture import family_report
from despliegue.drift.recorder import Recorder
from despliegue.errors import ClientError, error_body, error_response
from despliegue.lifecycle.plans import candidates, plans, served_tags
from despliegue.lifecycle.state import state_stamp
from despliegue.schemas import (
    BaselineFacts,
    CanaryState,
    DriftState,
    FamilyLifecycle,
    FamilyMonitoring,
    ServedModels,
)

# A runner's models are asked again at most this often while it has not yet applied the
# latest lifecycle state (it loads new models in the background).
DESCRIBE_AGAIN_S = 0.5
# The state file's stamp is read at most this often (a stat per request cost ~2% of a small
# request's CPU); the runners themselves look at the file every `lifecycle.poll_interval_s`.
STAMP_AGAIN_S = 0.1

# A runner's `describe` method, by family name, as the API service reaches it.
Describe = Callable[[str], Awaitable[Any]]


@dataclass
class Described:
    models: RunnerModels
    at: float


class Catalog:
    """The runners' model cards, cached, and the answers about what is served."""

    def __init__(self, describe: Describe, recorder: Recorder) -> None:
        self.describe = describe
        self.recorder = recorder
        self.drift_families = drift_families()
        self._described: dict[str, Described] = {}
        self._cards_by_tag: dict[str, ModelCard] = {}
        self._stamp, self._stamp_at = "", -STAMP_AGAIN_S

    def state_stamp(self) -> str:
        """The lifecycle state file's stamp, read again after STAMP_AGAIN_S."""
        now = time.monotonic()
        if now - self._stamp_at >= STAMP_AGAIN_S:
            self._stamp, self._stamp_at = state_stamp(), now
        return self._stamp

    async def described(self, family: str, fresh: bool = False) -> RunnerModels:
        """What a family's runner has loaded: kept until the lifecycle state file changes, then
        asked again until the runner reports it has applied the change."""
        kept = self._described.get(family)
        behind = kept is not None and kept.models.state_stamp != self.state_stamp()
        if kept is None or fresh or (behind and time.monotonic() - kept.at > DESCRIBE_AGAIN_S):
            answer = await self.describe(family)
            models = RunnerModels.model_validate(answer, from_attributes=True)
            kept = self._described[family] = Described(models, time.monotonic())
            # Kept for good: a batch that started before a swap answers with the replaced model.
            self._cards_by_tag.update({card.tag: card for card in models.cards})
        return kept.models

    async def cards(self, family: str) -> list[ModelCard]:
        return (await self.described(family)).cards

    async def card(self, key: str, tag: str | None = None) -> ModelCard:
        """The card of the model that answered with `tag` for a configuration key (the first,
        if two did), or of the model the key serves now."""
        runner = registry.family_of(key).name
        if tag is None:
            tag = str((await self.described(runner)).lanes[key]["served"])
        tag = tag.split(",")[0]
        if tag not in self._cards_by_tag:
            await self.described(runner, fresh=True)
        return self._cards_by_tag[tag]

    async def model_listing(self) -> ServedModels:
        """`GET /models`: every card, each family's lifecycle, and the monitoring."""
        names = [family.name for family in registry.FAMILIES]
        described = dict(zip(names, await asyncio.gather(*map(self.described, names)), strict=True))
        families = {}
        for key, plan in plans().items():
            runner = described[registry.family_of(key).name]
            families[key] = FamilyLifecycle(
                served=plan.served,
                source=plan.source,
                previous=plan.previous,
                candidates=candidates(plan),
                canary=CanaryState(tag=plan.canary, percent=plan.percent) if plan.canary else None,
                shadow=plan.shadow,
                loaded=runner.lanes.get(key, {}),
                problem=runner.problems.get(key),
            )
        cards = [card for models in described.values() for card in models.cards]
        return ServedModels(models=cards, families=families, monitoring=await self.monitoring())

    async def monitoring(self) -> dict[str, FamilyMonitoring]:
        """Per family: each served model's baseline and the last drift verdict."""
        monitoring = {}
        if self.recorder.settings.capture:
            for family in self.drift_families:
                report = await family_report(family, self.cards, self.recorder)
                monitoring[family] = FamilyMonitoring(
                    baseline={
                        m["model_tag"]: BaselineFacts(**m["baseline"]) for m in report["models"]
                    },
                    drift=DriftState(verdict=report["verdict"], checked_at=report["checked_at"]),
                )
        return monitoring

    async def comparison(self, key: str) -> ShadowStats | Response:
        """A family's shadow comparison, or 404 naming the family when it is not served."""
        try:
            runner = registry.family_of(key).name
        except KeyError:
            runner = None
        stats = (await self.described(runner, fresh=True)).shadow.get(key) if runner else None
        if stats is None:
            served = ", ".join(sorted(served_tags()))
            message = f"{key!r} is not a served family; families: {served}"
            return error_response(404, error_body(["family"], message, "value_error"))
        return stats

    async def drift_of(self, family: str) -> dict[str, Any]:
        """`GET /drift/{family}`, or 404 naming the families."""
        if family not in self.drift_families:
            raise ClientError(
                ["family"],
                f"unknown family {family!r}; one of {list(self.drift_families)}",
                status=HTTPStatus.NOT_FOUND,
            )
        return await family_report(family, self.cards, self.recorder)
