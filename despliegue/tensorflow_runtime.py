"""TensorFlow set-up for every process that runs a CNN (runners and reference training).

Thread pools can only be sized before TensorFlow runs its first op, so every loader that
brings TensorFlow in (a Keras model, MTCNN) calls `configure_tensorflow()` first; a runner
whose models are all compiled (despliegue/compiled_runtime.py) never imports it. oneDNN can
be switched off only before TensorFlow loads: `tensorflow_without_onednn()` records that, at
no cost, for the runner that needs it. The thread pools come from configuration.yaml
(`tensorflow:`), documented there. `CompiledImageModel` is how every runner calls a stored
Keras image CNN, compiled or in TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from despliegue.config import settings
from despliegue.contracts import ModelCard
from despliegue.images import resize
from despliegue.preprocessing import ImagePreprocessing

# Set by `use_cores` in a process that serves no one else (batch scoring): TensorFlow's
# intra-op pool then takes every core the process was given, instead of configuration's count
# (sized for several runner processes sharing one machine).
_intra_op_threads: int | None = None


def use_cores(count: int) -> None:
    """Size the intra-op pool of the next `configure_tensorflow` to `count` cores (call it
    before the first one: pools cannot change once TensorFlow has run an op)."""
    global _intra_op_threads
    _intra_op_threads = count


def tensorflow_without_onednn() -> None:
    """Have TensorFlow, if this process ever loads it, run its own kernels instead of
    oneDNN's (see configure_tensorflow); does not import it."""
    if "tensorflow" not in sys.modules:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def configure_tensorflow(onednn: bool = True) -> Any:
    """Import TensorFlow with the configured thread pools and return the module.

    `onednn=False` (effective only in the first call of a process, before TensorFlow loads)
    runs TensorFlow's own kernels instead of oneDNN's. oneDNN keeps memory for every input
    shape it meets, per worker thread, and never returns it: right for a model with a fixed
    input size (faster), wrong for one that takes images of any size (the face detector's
    runner grew 79% in 200 requests of varied sizes with it, not without: docs/performance.md).
    """
    from despliegue.quiet import import_tensorflow

    if not onednn:
        tensorflow_without_onednn()
    tf = import_tensorflow()

    threads = settings().tensorflow
    try:
        tf.config.threading.set_intra_op_parallelism_threads(
            _intra_op_threads or threads.intra_op_threads
        )
        tf.config.threading.set_inter_op_parallelism_threads(threads.inter_op_threads)
    except RuntimeError:
        pass  # already initialised in this process (e.g. a second model in one runner)
    return tf


class CompiledImageModel:
    """A stored Keras image CNN as a runner calls it: the preprocessing its model card records
    (input size, colour order, scaling; despliegue/preprocessing.py), so an imported model with
    its own input size or scaling is served without code changes, and one call per batch: its
    checked ONNX export as loaded (`OnnxModel`), or for a model served by TensorFlow one traced
    graph for every batch size (a plain model call per batch is slower, and `model.predict`
    adds ~80 ms per call)."""

    def __init__(self, model: Any, card: ModelCard) -> None:
        from despliegue.compiled_runtime import OnnxModel

        self.preprocessing = ImagePreprocessing.from_metadata(card.metadata["preprocessing"])
        self.size = self.preprocessing.size
        if isinstance(model, OnnxModel):
            self._forward: Any = model
            return
        tf = configure_tensorflow()
        self._forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec([None, *self.size, 3], tf.float32)],
        )

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's outputs for RGB images of any size (resized as it expects), one call."""
        batch = np.stack([resize(np.asarray(image, dtype=np.uint8), self.size) for image in images])
        return np.asarray(self._forward(self.preprocessing.apply(batch)))
