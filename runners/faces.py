"""img_super runner (seed 001): the `face_detector` (MTCNN) and the `face_validator` CNN.

Both models live in one process: a request to /super needs both, and a second TensorFlow
process would cost ~600 MB for nothing. Each model has its own batchable method, so
concurrent requests are merged per model. Cropping, scaling images to the detector's
`max_side` and the verdict are the API's job: images arrive at most max_side a side.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import bentoml
import numpy as np

from despliegue.config import settings
from despliegue.contracts import LANDMARKS, Answered, DetectionRow, ModelCard, RunnerModels
from despliegue.heap import settle_worker_heap
from despliegue.lifecycle.pinning import with_pinned_twins
from despliegue.lifecycle.plans import packs_served_models
from despliegue.lifecycle.swap import ServedModels
from despliegue.startup import serve_until_callers_stop

DETECTOR = settings().family("face_detector")
VALIDATOR = settings().family("face_validator")


def as_rows(faces: list[dict]) -> np.ndarray:
    """mtcnn's answer for one image as detection rows (despliegue/contracts.py)."""
    rows = [
        [*face["box"], face["confidence"]]
        + [coord for name in LANDMARKS for coord in face["keypoints"][name]]
        for face in faces
    ]
    return np.array(rows, dtype=np.float32).reshape(-1, DetectionRow.WIDTH)


def prepared(model: Any, card: ModelCard) -> Any:
    """The validation CNN as one traced graph; the MTCNN detector as loaded."""
    if card.framework != "keras":
        return model
    from despliegue.tensorflow_runtime import CompiledImageModel

    validator = CompiledImageModel(model, card)
    validator([np.zeros((*validator.size, 3), np.uint8)])  # traced now, not on a request
    return validator


def detect_faces(detector: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    """Per image, one DetectionRow per face found (despliegue/contracts.py)."""
    # mtcnn 1.0.0 pads a batch of mixed sizes to the largest and then shifts the boxes of
    # some images by another image's padding; images of one size need no padding, so
    # each group of same-sized images is one detector call.
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[np.shape(image)].append(index)
    empty = np.empty((0, DetectionRow.WIDTH), dtype=np.float32)
    answers: list[np.ndarray] = [empty] * len(images)
    for indices in by_shape.values():
        group = [np.asarray(images[i], dtype=np.uint8) for i in indices]
        for index, faces in zip(indices, detector.detect_faces(group), strict=True):
            answers[index] = as_rows(faces)
    return answers


def validation_scores(validator: Any, crops: list[np.ndarray]) -> list[float]:
    return [float(score) for score in validator(crops).reshape(-1)]


@bentoml.service(**settings().service_options("FaceAnalyzer"))
@packs_served_models("faces")
@with_pinned_twins
class FaceAnalyzer:
    def __init__(self) -> None:
        from despliegue.tensorflow_runtime import tensorflow_without_onednn

        # The detector takes images of any size, so no oneDNN: its per-shape memory is never
        # given back. TensorFlow itself is imported (thread pools sized first) by the loaders
        # of the models that need it; a compiled validator and a compiled MTCNN
        # (despliegue/mtcnn_compiled.py, same detect_faces answer) do not.
        tensorflow_without_onednn()
        self.models = ServedModels("faces", prepare=prepared)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        settle_worker_heap()

    @bentoml.api(**DETECTOR.batching.api_options())
    def detect(self, images: list[np.ndarray]) -> list[Answered]:
        """Per image, one DetectionRow per face (despliegue/contracts.py), with the tag."""
        return self.models.answer("face_detector", images, detect_faces)

    @bentoml.api(**VALIDATOR.batching.api_options())
    def validate(self, crops: list[np.ndarray]) -> list[Answered]:
        """Validation score in [0, 1] per face crop (any size; resized as the model expects)."""
        return self.models.answer("face_validator", crops, validation_scores)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
