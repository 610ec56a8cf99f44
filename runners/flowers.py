"""Flowers runner (seed 002): the `flower_classifier` Keras CNN, batched over images.

It receives decoded RGB arrays of any size and applies the preprocessing stored in the
model's metadata (input size, scale, offset), so an imported model with its own input size
or scaling is served without code changes. Returns class probabilities; naming the classes
and applying the threshold is the API's job (it reads the classes from the model card).
"""

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
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("flowers")


def compiled(model: Any, card: ModelCard) -> Any:
    from despliegue.tensorflow_runtime import CompiledImageModel

    classifier = CompiledImageModel(model, card)
    classifier([np.zeros((*classifier.size, 3), np.uint8)])  # traced now, not on a request
    return classifier


def probabilities(classifier: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    return list(classifier(images).astype(np.float32))


@bentoml.service(**settings().service_options("FlowerClassifier"))
@packs_served_models("flowers")
@with_pinned_twins
class FlowerClassifier:
    def __init__(self) -> None:
        # A compiled model needs no TensorFlow; one served by TensorFlow has its thread pools
        # sized by the loader, before the first op (despliegue/tensorflow_runtime.py).
        self.models = ServedModels("flowers", prepare=compiled)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        settle_worker_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, images: list[np.ndarray]) -> list[Answered]:
        """Class probabilities for each RGB image (one model call for the whole batch)."""
        return self.models.answer("flowers", images, probabilities)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
