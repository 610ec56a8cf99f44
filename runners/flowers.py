"""Flowers runner (seed 002): the `flower_classifier` Keras CNN, batched over images.

It receives decoded RGB arrays of any size and applies the preprocessing stored in the
model's metadata (input size, scale, offset), so an imported model with its own input size
or scaling is served without code changes. Returns class probabilities; naming the classes
and applying the threshold is the API's job (it reads the classes from the model card).
"""

from __future__ import annotations

import bentoml
import numpy as np

from despliegue.artifacts import ModelCard, load_served_model
from despliegue.config import settings
from despliegue.heap import freeze_startup_heap
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("flowers")


@bentoml.service(**settings().service_options("FlowerClassifier"))
class FlowerClassifier:
    model_ref = bentoml.models.BentoModel(FAMILY.tag)

    def __init__(self) -> None:
        from despliegue.tensorflow_runtime import CompiledImageModel, configure_tensorflow

        configure_tensorflow()  # thread pools first: they cannot be sized after the first op
        model, self.card = load_served_model(type(self).model_ref)
        self.classifier = CompiledImageModel(model, self.card)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities for each RGB image (one model call for the whole batch)."""
        return list(self.classifier(images).astype(np.float32))

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.card]
