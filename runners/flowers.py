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
from despliegue.images import resize

FAMILY = settings().family("flowers")


@bentoml.service(**settings().service_options("FlowerClassifier"))
class FlowerClassifier:
    model_ref = bentoml.models.BentoModel(FAMILY.tag)

    def __init__(self) -> None:
        from despliegue.tensorflow_runtime import configure_tensorflow

        tf = configure_tensorflow()
        self.model, self.card = load_served_model(type(self).model_ref)
        preprocessing = self.card.metadata["preprocessing"]
        self.size = (int(preprocessing["size"][0]), int(preprocessing["size"][1]))
        self.scale = np.float32(preprocessing["scale"])
        self.offset = np.float32(preprocessing["offset"])
        # One traced graph for every batch size (a plain model call per request is slower).
        self.forward = tf.function(
            lambda batch: self.model(batch, training=False),
            input_signature=[tf.TensorSpec([None, *self.size, 3], tf.float32)],
        )
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities for each RGB image (one model call for the whole batch)."""
        batch = np.stack([resize(np.asarray(image, dtype=np.uint8), self.size) for image in images])
        probabilities = self.forward(batch.astype(np.float32) * self.scale + self.offset)
        return list(np.asarray(probabilities, dtype=np.float32))

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.card]
