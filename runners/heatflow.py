"""Heat flow runner (seed 000): the `heatflow_svr` SVR pipeline, batched over thickness values.

The model gets the input shape it was fitted on (a named DataFrame column or an (n, 1) array;
despliegue/sklearn_input.py). Which stored model answers follows the lifecycle state
(despliegue/lifecycle/)."""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from despliegue.config import settings
from despliegue.contracts import Answered, ModelCard, RunnerModels
from despliegue.heap import settle_worker_heap
from despliegue.lifecycle.pinning import with_pinned_twins
from despliegue.lifecycle.plans import packs_served_models
from despliegue.lifecycle.swap import ServedModels
from despliegue.sklearn_input import OneColumnInput, numeric_column
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("heatflow")


def with_input(model: Any, card: ModelCard) -> tuple[Any, OneColumnInput]:
    return model, OneColumnInput(model, numeric_column, card.metadata.get("input_column"))


def heat_flow(prepared: tuple[Any, OneColumnInput], sediment_thickness_m: np.ndarray) -> np.ndarray:
    model, model_input = prepared
    inputs = model_input(np.asarray(sediment_thickness_m, dtype=float).reshape(-1))
    return np.asarray(model.predict(inputs), dtype=float).reshape(-1)


@bentoml.service(**settings().service_options("HeatFlowRegressor"))
@packs_served_models("heatflow")
@with_pinned_twins
class HeatFlowRegressor:
    def __init__(self) -> None:
        self.models = ServedModels("heatflow", prepare=with_input)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        settle_worker_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def predict(self, sediment_thickness_m: np.ndarray) -> list[Answered]:
        """Heat flow in mW/m² for a 1-D batch of thicknesses in metres."""
        return self.models.answer("heatflow", sediment_thickness_m, heat_flow)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
