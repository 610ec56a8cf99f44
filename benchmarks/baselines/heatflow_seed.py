"""Seed 000's design: FastAPI + pydantic validation + a joblib-loaded SVR, one call per request.

The seed serves "Epsilon-Support Vector Regression OceanHeatMLFlow" with FastAPI, validates
input types with pydantic and loads the model with joblib. The request and response fields
are the service's, so the same load hits both.

    MODEL_FILE=.../model.joblib uvicorn benchmarks.baselines.heatflow_seed:app
"""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["MODEL_FILE"])
app = FastAPI(title="OceanHeatMLFlow")


class HeatFlowInput(BaseModel):
    sediment_thickness_m: list[float]


class HeatFlowOutput(BaseModel):
    sediment_thickness_m: list[float]
    heat_flow_mw_m2: list[float]


@app.post("/heatflow", response_model=HeatFlowOutput)
async def predict(data: HeatFlowInput) -> HeatFlowOutput:
    features = np.asarray(data.sediment_thickness_m, dtype=float).reshape(-1, 1)
    prediction = model.predict(features)
    return HeatFlowOutput(
        sediment_thickness_m=data.sediment_thickness_m,
        heat_flow_mw_m2=np.round(prediction, 3).tolist(),
    )
