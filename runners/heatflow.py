"""Heat flow runner (seed 000): the `heatflow_svr` SVR pipeline, batched over thickness values."""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from despliegue.config import settings
from despliegue.heap import freeze_startup_heap
from despliegue.lifecycle import Answered, RunnerModels, ServedModels, packs_served_models

FAMILY = settings().family("heatflow")


def heat_flow(model: Any, sediment_thickness_m: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(sediment_thickness_m.reshape(-1, 1)), dtype=float)


@bentoml.service(**settings().service_options("HeatFlowRegressor"))
@packs_served_models("heatflow")
class HeatFlowRegressor:
    def __init__(self) -> None:
        self.models = ServedModels("heatflow")
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def predict(self, sediment_thickness_m: np.ndarray) -> list[Answered]:
        """Heat flow in mW/m² for a 1-D batch of thicknesses in metres."""
        return self.models.answer("heatflow", sediment_thickness_m, heat_flow)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
