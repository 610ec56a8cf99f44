"""img_super runner (seed 001): the `face_detector` (MTCNN) and the `face_validator` CNN.

Both models live in one process: a request to /super needs both, and a second TensorFlow
process would cost ~600 MB for nothing. Each model has its own batchable method, so
concurrent requests are merged per model. Cropping, scaling images to the detector's
`max_side` and the verdict are the API's job: images arrive at most max_side a side.
"""

from __future__ import annotations

from collections import defaultdict

import bentoml
import numpy as np

from despliegue.artifacts import ModelCard, load_served_model
from despliegue.config import settings
from despliegue.contracts import LANDMARKS, DetectionRow
from despliegue.heap import freeze_startup_heap
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


@bentoml.service(**settings().service_options("FaceAnalyzer"))
class FaceAnalyzer:
    detector_ref = bentoml.models.BentoModel(DETECTOR.tag)
    validator_ref = bentoml.models.BentoModel(VALIDATOR.tag)

    def __init__(self) -> None:
        from despliegue.tensorflow_runtime import CompiledImageModel, configure_tensorflow

        # Thread pools first: they cannot be sized after the first op. The detector takes images
        # of any size, so no oneDNN: its per-shape memory is never given back.
        configure_tensorflow(onednn=False)
        self.detector, self.detector_card = load_served_model(type(self).detector_ref)
        validator, self.validator_card = load_served_model(type(self).validator_ref)
        self.score_crops = CompiledImageModel(validator, self.validator_card)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        freeze_startup_heap()

    @bentoml.api(**DETECTOR.batching.api_options())
    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
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
            for index, faces in zip(indices, self.detector.detect_faces(group), strict=True):
                answers[index] = as_rows(faces)
        return answers

    @bentoml.api(**VALIDATOR.batching.api_options())
    def validate(self, crops: list[np.ndarray]) -> list[float]:
        """Validation score in [0, 1] per face crop (any size; resized as the model expects)."""
        return [float(score) for score in self.score_crops(crops).reshape(-1)]

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.detector_card, self.validator_card]
