"""How runners call a stored Keras image CNN (despliegue.tensorflow_runtime.CompiledImageModel):
the model card's preprocessing is applied, images of any size are resized, one call per batch."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from despliegue.contracts import ModelCard
from despliegue.images import resize
from despliegue.tensorflow_runtime import CompiledImageModel, configure_tensorflow


def test_outputs_match_the_model_on_the_preprocessed_batch() -> None:
    tf = configure_tensorflow()
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input(shape=(8, 6, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    card = ModelCard(
        tag="tiny:1",
        family="flowers",
        framework="keras",
        reference=True,
        created=datetime.now(UTC),
        metadata={"preprocessing": {"size": [8, 6], "scale": 0.5, "offset": -1.0}},
    )
    compiled = CompiledImageModel(model, card)
    rng = np.random.default_rng(0)
    same_size = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    larger = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)

    outputs = compiled([same_size, larger])

    expected_batch = np.stack([same_size, resize(larger, (8, 6))]).astype(np.float32) * 0.5 - 1.0
    expected = model(tf.constant(expected_batch), training=False).numpy()
    assert compiled.size == (8, 6)
    assert outputs.shape == (2, 2)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        compiled([])  # no images: nothing to stack
