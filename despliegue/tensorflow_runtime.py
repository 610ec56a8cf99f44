"""TensorFlow set-up for every process that runs a CNN (runners and reference training).

Thread pools can only be sized before TensorFlow runs its first op, so each runner calls
`configure_tensorflow()` first thing in `__init__`. The sizes come from configuration.yaml
(`tensorflow:`), documented there. `CompiledImageModel` is how every runner calls a stored
Keras image CNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from despliegue.config import settings
from despliegue.images import resize
from despliegue.preprocessing import ImagePreprocessing

if TYPE_CHECKING:
    from despliegue.artifacts import ModelCard


def configure_tensorflow() -> Any:
    """Import TensorFlow with the configured thread pools and return the module."""
    from despliegue.quiet import import_tensorflow

    tf = import_tensorflow()

    threads = settings().tensorflow
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads.inter_op_threads)
    except RuntimeError:
        pass  # already initialised in this process (e.g. a second model in one runner)
    return tf


class CompiledImageModel:
    """A stored Keras image CNN as a runner calls it: the preprocessing its model card records
    (input size, colour order, scaling; despliegue/preprocessing.py), so an imported model with
    its own input size or scaling is served without code changes, and one traced graph for
    every batch size (a plain model call per batch is slower, and `model.predict` adds ~80 ms
    per call)."""

    def __init__(self, model: Any, card: ModelCard) -> None:
        tf = configure_tensorflow()
        self.preprocessing = ImagePreprocessing.from_metadata(card.metadata["preprocessing"])
        self.size = self.preprocessing.size
        self._forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec([None, *self.size, 3], tf.float32)],
        )

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's outputs for RGB images of any size (resized as it expects), one call."""
        batch = np.stack([resize(np.asarray(image, dtype=np.uint8), self.size) for image in images])
        return np.asarray(self._forward(self.preprocessing.apply(batch)))
