"""Seed 004's design: FastAPI + uvicorn + a joblib-loaded scikit-learn pipeline, one call per
request. The seed's clients POST `texts` and read `is_falsetrue` (0 False, 1 Real).

    MODEL_FILE=.../model.joblib uvicorn benchmarks.baselines.falsetrue_seed:app
"""

from __future__ import annotations

import os

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["MODEL_FILE"])
app = FastAPI(title="unaldespliegue")


class Texts(BaseModel):
    texts: list[str]


@app.post("/falsetrue")
async def falsetrue(data: Texts) -> dict[str, list[int]]:
    return {"is_falsetrue": [int(label) for label in model.predict(data.texts)]}
