"""Seed 002's design: FastAPI + uvicorn + the Keras flower CNN loaded at import, one model
call per request. The seed names no serving code beyond "an endpoint"; this is the plain one:
decode the Base64 images, resize to the model's input, scale to [0, 1], call the model
(`model(x)`, not `model.predict`, which adds ~80 ms per call), answer the top class.

    MODEL_FILE=.../model.keras uvicorn benchmarks.baselines.flowers_seed:app
"""

from __future__ import annotations

import base64
import io
import os

import keras
import numpy as np
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel

model = keras.models.load_model(os.environ["MODEL_FILE"], compile=False)
HEIGHT, WIDTH = model.input_shape[1:3]
app = FastAPI(title="Clasificación de Flores")


class Images(BaseModel):
    images: list[str]
    top_k: int = 3


def pixels(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
    return np.asarray(image.resize((WIDTH, HEIGHT)), dtype=np.float32) / 255.0


@app.post("/flowers")
async def flowers(data: Images) -> dict[str, list[dict[str, object]]]:
    batch = np.stack([pixels(image) for image in data.images])
    probabilities = np.asarray(model(batch, training=False))
    answers = []
    for row in probabilities:
        ranked = np.argsort(row)[::-1][: data.top_k]
        answers.append(
            {"class_id": int(ranked[0]), "top_k": [[int(i), float(row[i])] for i in ranked]}
        )
    return {"predictions": answers}
