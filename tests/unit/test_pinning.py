"""A call pinned to one loaded version (despliegue/lifecycle/pinning.py): each batchable runner
method has an unbatched twin that answers under the pin, and the API's call goes to that twin
only for the model key it was pinned for."""

from __future__ import annotations

import asyncio
import sys

import bentoml
import pytest

from despliegue import registry
from despliegue.lifecycle.pinning import pinnable, pinned_to, runner_pin, with_pinned_twins
from tests.unit.test_registry import heatflow


@bentoml.service
@with_pinned_twins
class Echo:
    @bentoml.api(batchable=True)
    def predict(self, values: list[float]) -> list[str | None]:
        """Each item answered with the pin it was called under."""
        return [runner_pin() for _ in values]

    @bentoml.api
    def describe(self) -> dict:
        return {}


def test_each_batchable_method_gets_an_unbatched_twin_taking_the_tag() -> None:
    twin = Echo.apis["predict_pinned"]
    assert not twin.batchable and Echo.apis["predict"].batchable
    assert list(twin.input_spec.model_fields) == ["values", "tag"]
    assert "describe_pinned" not in Echo.apis
    echo = Echo()
    assert echo.predict_pinned(values=[1.0, 2.0], tag="m:v1") == ["m:v1", "m:v1"]
    assert echo.predict([1.0]) == [None], "the pin lasts for the twin's call only"


def test_the_api_pins_only_the_model_key_it_was_asked_to() -> None:
    calls: list[tuple[str, str | None]] = []

    async def everyday(items: list[int]) -> list[int]:
        calls.append(("everyday", None))
        return items

    async def pinned(items: list[int], tag: str) -> list[int]:
        calls.append(("pinned", tag))
        return items

    detector, validator = (
        pinnable("detector", everyday, pinned),
        pinnable("validator", everyday, pinned),
    )

    async def super_request() -> None:
        with pinned_to("validator", "validator:v2"):
            await detector([1])
            await validator([2])
        await validator([3])

    asyncio.run(super_request())
    assert calls == [("everyday", None), ("pinned", "validator:v2"), ("everyday", None)]


def test_a_v2_model_whose_runner_has_no_twin_fails_the_check() -> None:
    @bentoml.service
    class Untwinned:
        @bentoml.api(batchable=True)
        def predict(self, values: list[float]) -> list[float]:
            return values

        @bentoml.api
        def describe(self) -> dict:
            return {}

    sys.modules[__name__].Untwinned = Untwinned  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"no predict_pinned .*@with_pinned_twins"):
        registry.check((heatflow(runner=f"{__name__}:Untwinned"),))
    sys.modules[__name__].Echo = Echo  # type: ignore[attr-defined]
    registry.check((heatflow(runner=f"{__name__}:Echo"),))
