"""Importing a Keras image model (flowers, face validator): how its input must be prepared.

A model trained in a notebook often scales its own input: Keras' tutorials start with
`Rescaling(1/255)`, `keras.applications` models carry `Rescaling`/`Normalization` layers (with
`include_preprocessing=True`), and an adapted `Normalization` layer standardises whatever it
was adapted on. Scaling such a model's input again changes its answers silently, so the
import looks for those layers at any depth of nesting and records "raw 0-255" when it finds
one; what the user declares (`save_models.py import --preprocessing ...`) overrides that.

After deciding, the import calls the model on photos that ship with scikit-learn (and crops of
them): near-constant outputs over such different images usually mean the scaling is wrong,
and the import summary says so, naming the presets under which the outputs do vary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from despliegue.preprocessing import PRESETS, ImagePreprocessing

# Outputs whose largest spread over the sample images is below this are "near-constant".
FLAT_OUTPUT_SPREAD = 1e-3


def input_size(model: Any) -> tuple[int, int]:
    _, height, width, _ = model.inputs[0].shape
    return int(height), int(width)


def _layers(model: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every layer in the model's order, descending into nested models, with its path."""
    for layer in getattr(model, "layers", []):
        name = f"{path}/{layer.name}" if path else layer.name
        yield name, layer
        yield from _layers(layer, name)


def in_model_preprocessing(model: Any) -> list[tuple[str, Any]]:
    """The value-changing preprocessing layers inside the model, first one first."""
    import keras

    return [
        (name, layer)
        for name, layer in _layers(model)
        if isinstance(layer, keras.layers.Rescaling) or _is_normalization(layer)
    ]


def _is_normalization(layer: Any) -> bool:
    """A Normalization layer that standardises its input (not one that undoes it)."""
    import keras

    return isinstance(layer, keras.layers.Normalization) and not layer.invert


def _describe(name: str, layer: Any) -> str:
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        return f"{name} (Rescaling × {_value(layer.scale)} + {_value(layer.offset)})"
    return f"{name} (Normalization, mean {_value(_normalization_mean(layer))})"


def _normalization_mean(layer: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(layer.mean), dtype=float).reshape(-1)


def _value(value: Any) -> str:
    values = np.asarray(value, dtype=float).reshape(-1)
    if values.size == 1:
        return f"{values[0]:.6g}"
    return "[" + ", ".join(f"{v:.4g}" for v in values[:3]) + (", …]" if values.size > 3 else "]")


def decide_preprocessing(
    model: Any, declared: dict[str, Any] | None, default: dict[str, Any]
) -> ImagePreprocessing:
    """Raw 0-255 if the model scales its own input, else `default`; then what was declared.

    One exception to "raw": a `Normalization` layer first, adapted on data in 0..1 (all its
    means <= 1), was fed pixels / 255 in training, so the model gets pixels / 255.
    """
    found = in_model_preprocessing(model)
    described = tuple(_describe(name, layer) for name, layer in found)
    mapping, decided_by, note = default, "default", ""
    if found:
        name, first = found[0]
        decided_by = "detected"
        mapping = PRESETS["raw"]
        if _is_normalization(first) and _adapted_on_unit_values(first):
            mapping = PRESETS["unit"]
            note = f"{name} was adapted on values in 0..1 (mean ≤ 1): pixels / 255"
    decided = ImagePreprocessing(
        size=input_size(model), **mapping, decided_by=decided_by, in_model=described, note=note
    )
    return decided.declare(declared or {})


def _adapted_on_unit_values(layer: Any) -> bool:
    mean = _normalization_mean(layer)
    return bool(mean.size) and bool(np.all((mean >= 0) & (mean <= 1)))


def sample_images(size: tuple[int, int]) -> np.ndarray:
    """Varied real photos at the model's input size: scikit-learn's two sample photos
    (a temple, a flower), whole and in quadrants, and each mirrored."""
    from sklearn.datasets import load_sample_images

    from despliegue.images import resize

    pictures = []
    for photo in load_sample_images().images:
        height, width = photo.shape[:2]
        views = [photo] + [
            photo[top : top + height // 2, left : left + width // 2]
            for top in (0, height // 2)
            for left in (0, width // 2)
        ]
        for view in views:
            pictures.append(resize(np.ascontiguousarray(view), size))
            pictures.append(resize(np.ascontiguousarray(view[:, ::-1]), size))
    return np.stack(pictures)


def output_spread(model: Any, images: np.ndarray, preprocessing: ImagePreprocessing) -> float:
    """Largest range, over the model's outputs, of its answers to the images."""
    outputs = np.asarray(model(preprocessing.apply(images), training=False), dtype=float)
    outputs = outputs.reshape(len(images), -1)
    return float(np.max(outputs.max(axis=0) - outputs.min(axis=0)))


def flat_output_warnings(model: Any, metadata: dict[str, Any]) -> list[str]:
    """A warning if the model answers nearly the same to very different photos."""
    preprocessing = ImagePreprocessing.from_metadata(metadata["preprocessing"])
    images = sample_images(preprocessing.size)
    spread = output_spread(model, images, preprocessing)
    if spread >= FLAT_OUTPUT_SPREAD:
        return []
    alternatives = []
    for name, preset in PRESETS.items():
        with_preset = ImagePreprocessing(size=preprocessing.size, **preset)
        if (spread_with := output_spread(model, images, with_preset)) >= FLAT_OUTPUT_SPREAD:
            alternatives.append(f"--preprocessing {name} (spread {spread_with:.3g})")
    hint = (
        f"its outputs do vary with {', '.join(alternatives)}"
        if alternatives
        else "no preset makes them vary: check the model itself"
    )
    return [
        f"outputs are near-constant over {len(images)} different photos (largest spread "
        f"{spread:.2g}) with the recorded preprocessing, {preprocessing.summary()}: the input "
        f"scaling may be wrong; {hint}"
    ]
