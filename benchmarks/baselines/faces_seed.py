"""Seed 001's design (img_super): FastAPI + uvicorn, MTCNN and the validation CNN loaded at
import, both called per request. /face: Base64 image -> MTCNN -> coordinates. /super: MTCNN
-> crop each face -> validation CNN -> score -> TRUE/FALSE. MTCNN is the mtcnn package's
(the weights the service's `face_detector` copies); the CNN is the stored `face_validator`.

    MODEL_FILE=.../face_validator/model.keras uvicorn benchmarks.baselines.faces_seed:app
"""

from __future__ import annotations

import base64
import io
import os

import keras
import numpy as np
from fastapi import FastAPI
from mtcnn import MTCNN
from PIL import Image
from pydantic import BaseModel

detector = MTCNN()
validator = keras.models.load_model(os.environ["MODEL_FILE"], compile=False)
HEIGHT, WIDTH = validator.input_shape[1:3]
MIN_CONFIDENCE = 0.9
THRESHOLD = 0.5
app = FastAPI(title="img_super")


class ImageInput(BaseModel):
    input_data: list[str]


def pixels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def faces(image: np.ndarray) -> list[dict]:
    found = detector.detect_faces(image)
    return [face for face in found if face["confidence"] >= MIN_CONFIDENCE]


@app.post("/face")
async def face(data: ImageInput) -> dict[str, list[list[dict]]]:
    answers = []
    for encoded in data.input_data:
        answers.append(
            [
                {"box": [int(v) for v in f["box"]], "confidence": float(f["confidence"])}
                for f in faces(pixels(encoded))
            ]
        )
    return {"images": answers}


@app.post("/super")
async def super_(data: ImageInput) -> dict[str, list[dict]]:
    answers = []
    for encoded in data.input_data:
        image = pixels(encoded)
        found = faces(image)
        scores: list[float] = []
        if found:
            crops = []
            for f in found:
                x, y, w, h = (max(0, int(v)) for v in f["box"])
                crop = Image.fromarray(image[y : y + max(1, h), x : x + max(1, w)])
                crops.append(np.asarray(crop.resize((WIDTH, HEIGHT)), dtype=np.float32) / 255.0)
            scores = [float(s) for s in np.asarray(validator(np.stack(crops))).reshape(-1)]
        best = max(scores, default=0.0)
        answers.append({"result": best >= THRESHOLD, "score": best, "boxes": len(found)})
    return {"images": answers}
