"""Heat flow runner (seed 000): the `heatflow_svr` SVR pipeline, batched over thickness values.

The model gets the input shape it was fitted on (a named DataFrame column or an (n, 1) array;
despliegue/sklearn_input.py)."""

from __future__ import annotations

import bentoml
import numpy as np

from despliegue.artifacts import ModelCard, load_served_model
from despliegue.config import settings
from despliegue.heap import freeze_startup_heap
from despliegue.sklearn_input import OneColumnInput, numeric_column
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("heatflow")


@bentoml.service(**settings().service_options("HeatFlowRegressor"))
class HeatFlowRegressor:
    model_ref = bentoml.models.BentoModel(FAMILY.tag)

    def __init__(self) -> None:
        self.model, self.card = load_served_model(type(self).model_ref)
        self.model_input = OneColumnInput(self.model, numeric_column)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def predict(self, sediment_thickness_m: np.ndarray) -> np.ndarray:
        """Heat flow in mW/m² for a 1-D batch of thicknesses in metres."""
        inputs = self.model_input(np.asarray(sediment_thickness_m, dtype=float).reshape(-1))
        return np.asarray(self.model.predict(inputs), dtype=float).reshape(-1)

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.card]
