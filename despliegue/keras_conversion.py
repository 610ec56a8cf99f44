"""Every Keras-family artifact enters the store as one `.keras` file that Keras alone loads.

- `.keras` files are stored as they are.
- `.h5` files (the legacy format) are loaded and saved again as `.keras`.
- TensorFlow SavedModel folders (`tf.saved_model.save`, `model.export`, older
  `mlflow.tensorflow`) cannot be loaded by Keras 3 as models. Keras' `TFSMLayer` can call one,
  but a `.keras` file holding a TFSMLayer keeps only the folder's path. `EmbeddedSavedModel`
  is a TFSMLayer-like layer that calls the serving signature (its input and output names read
  from the signature) and saves the whole SavedModel folder inside the `.keras` file (Keras
  layer assets), so the stored file is self-contained; it is wrapped in a functional model
  with the signature's input shape.

A converted file is loaded back and called on a probe input next to the original; it is
stored only if both answer the same to 1e-5. Like pickles, a SavedModel's graph is trusted:
import only artifacts you trust.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from despliegue.tensorflow_runtime import configure_tensorflow

tf = configure_tensorflow()
import keras  # noqa: E402  (TensorFlow's thread pools are sized first)

DEFAULT_SIGNATURE = "serving_default"
# Among several outputs, the one a classifier's signature names for class probabilities.
PROBABILITY_OUTPUTS = ("probabilities", "probs", "scores")
CONVERSION_TOLERANCE = 1e-5
ASSET_FOLDER = "saved_model"


class ConversionRefused(ValueError):
    """The artifact cannot become a .keras model the runner serves; says why."""


@dataclass(frozen=True)
class ServingSignature:
    """The one input and one output of a SavedModel signature the model is served through."""

    name: str
    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: str
    output_name: str
    output_shape: tuple[int | None, ...]


def serving_signature(loaded: Any, folder: Path, wanted: str | None = None) -> ServingSignature:
    """Pick the signature (`wanted`, else serving_default, else the only one) and read its
    input and output names, shapes and types."""
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ConversionRefused(
            f"{folder}: the SavedModel has no serving signature; save it with one "
            "(model.export(path) or tf.saved_model.save(module, path, signatures=...))"
        )
    name = wanted or (
        DEFAULT_SIGNATURE
        if DEFAULT_SIGNATURE in signatures or len(signatures) > 1
        else next(iter(signatures))
    )
    if name not in signatures:
        raise ConversionRefused(
            f"{folder}: no signature {name!r}; the SavedModel has {sorted(signatures)}"
        )
    function = signatures[name]
    _, inputs = function.structured_input_signature
    if len(inputs) != 1:
        raise ConversionRefused(
            f"{folder}: signature {name!r} takes {len(inputs)} inputs ({sorted(inputs)}); "
            "a served model takes one tensor"
        )
    ((input_name, input_spec),) = inputs.items()
    if not input_spec.dtype.is_floating and not input_spec.dtype.is_integer:
        raise ConversionRefused(
            f"{folder}: signature {name!r} takes {input_spec.dtype.name} input {input_name!r}; "
            "export a signature that takes the numeric tensor"
        )
    outputs = dict(function.structured_outputs)
    output_name = _output_name(outputs, folder, name)
    return ServingSignature(
        name=name,
        input_name=input_name,
        input_shape=tuple(input_spec.shape.as_list()),
        input_dtype=input_spec.dtype.name,
        output_name=output_name,
        output_shape=tuple(outputs[output_name].shape.as_list()),
    )


def _output_name(outputs: dict[str, Any], folder: Path, signature: str) -> str:
    if len(outputs) == 1:
        return next(iter(outputs))
    for name in PROBABILITY_OUTPUTS:
        if name in outputs:
            return name
    raise ConversionRefused(
        f"{folder}: signature {signature!r} has {len(outputs)} outputs ({sorted(outputs)}) and "
        f"none is named {' or '.join(PROBABILITY_OUTPUTS)}; export one with a single output"
    )


@keras.saving.register_keras_serializable(package="despliegue")
class EmbeddedSavedModel(keras.layers.Layer):
    """Calls one signature of a TensorFlow SavedModel that travels inside the .keras file."""

    def __init__(
        self,
        signature: str,
        input_name: str,
        input_dtype: str,
        output_name: str,
        output_shape: list[int | None],
        source: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.signature = signature
        self.input_name = input_name
        self.signature_input_dtype = input_dtype
        self.output_name = output_name
        self.signature_output_shape = list(output_shape)
        # Set when converting; a layer loaded from a .keras file reads its assets instead.
        self.source = source
        self._function: Any = None
        if source is not None:
            self._load(Path(source))

    def _load(self, folder: Path) -> None:
        self._loaded = tf.saved_model.load(str(folder))
        self._function = self._loaded.signatures[self.signature]

    def call(self, inputs: Any) -> Any:
        value = tf.cast(inputs, self.signature_input_dtype)
        return self._function(**{self.input_name: value})[self.output_name]

    def compute_output_spec(self, inputs: Any) -> Any:
        # The signature's own output spec, so a model can be rebuilt from its config before
        # the SavedModel is read from the file's assets.
        return keras.KerasTensor([inputs.shape[0], *self.signature_output_shape[1:]])

    def save_own_variables(self, store: Any) -> None:
        """Nothing: the variables live in the embedded SavedModel."""

    def load_own_variables(self, store: Any) -> None:
        """Nothing: the variables live in the embedded SavedModel."""

    def save_assets(self, dir_path: str) -> None:
        if self.source is None:
            raise ValueError(
                "an EmbeddedSavedModel loaded from a .keras file is saved by copying that file"
            )
        shutil.copytree(self.source, Path(dir_path) / ASSET_FOLDER)

    def load_assets(self, dir_path: str) -> None:
        self._load(Path(dir_path) / ASSET_FOLDER)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "signature": self.signature,
            "input_name": self.input_name,
            "input_dtype": self.signature_input_dtype,
            "output_name": self.output_name,
            "output_shape": self.signature_output_shape,
        }


def wrap_saved_model(
    folder: Path, signature_name: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(Keras model over the SavedModel, the original signature function, provenance)."""
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise ConversionRefused(f"{folder}: TensorFlow cannot load the SavedModel: {exc}") from exc
    signature = serving_signature(loaded, folder, signature_name)
    inputs = keras.Input(shape=signature.input_shape[1:], name=signature.input_name)
    outputs = EmbeddedSavedModel(
        signature=signature.name,
        input_name=signature.input_name,
        input_dtype=signature.input_dtype,
        output_name=signature.output_name,
        output_shape=list(signature.output_shape),
        source=str(folder),
        name="saved_model",
    )(inputs)
    model = keras.Model(inputs, outputs, name=folder.name or "saved_model")
    original = loaded.signatures[signature.name]

    def call_original(batch: np.ndarray) -> np.ndarray:
        value = tf.cast(batch, signature.input_dtype)
        return original(**{signature.input_name: value})[signature.output_name].numpy()

    provenance = {
        "saved_model_signature": signature.name,
        "saved_model_input": signature.input_name,
        "saved_model_output": signature.output_name,
    }
    return model, call_original, provenance


def probe_batch(model: Any) -> np.ndarray:
    """Two deterministic inputs of the model's input shape, values in 0..255."""
    shape = [8 if size is None else int(size) for size in model.inputs[0].shape[1:]]
    return np.random.default_rng(2026).uniform(0, 255, size=(2, *shape)).astype(np.float32)


def save_and_check(model: Any, original: Any, target: Path) -> Any:
    """Save `model` as .keras at `target`, load it back, and return the loaded model if it
    answers like `original` (a callable on a batch) on the probe input."""
    model.save(target)
    converted = keras.models.load_model(target, compile=False)
    batch = probe_batch(converted)
    expected = np.asarray(original(batch), dtype=float)
    answered = np.asarray(converted(batch, training=False), dtype=float)
    if expected.shape != answered.shape or not np.allclose(
        answered, expected, rtol=CONVERSION_TOLERANCE, atol=CONVERSION_TOLERANCE
    ):
        difference = (
            f"largest difference {np.max(np.abs(answered - expected)):.3g}"
            if expected.shape == answered.shape
            else f"shapes {answered.shape} vs {expected.shape}"
        )
        raise ConversionRefused(
            f"the converted .keras model does not answer like the original ({difference})"
        )
    return converted


def load_keras_artifact(
    path: Path, work: Path, signature: str | None = None
) -> tuple[Any, Path, dict[str, Any]]:
    """(model loaded from the .keras file to store, that file, provenance) for a .keras or
    .h5 file or a SavedModel folder; `work` is a scratch folder for converted files."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ConversionRefused(f"{path}: a folder must be a TensorFlow SavedModel")
        model, original, provenance = wrap_saved_model(path, signature)
        target = work / "model.keras"
        converted = save_and_check(model, original, target)
        return converted, target, {"source_format": "SavedModel", **provenance}
    suffix = path.suffix.lower()
    if suffix not in {".keras", ".h5", ".hdf5"}:
        raise ConversionRefused(
            f"{path}: a Keras model must be a .keras or .h5 file or a SavedModel folder"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ConversionRefused(
            f"{path}: cannot be loaded by Keras {keras.__version__}: {exc}"
        ) from exc
    provenance = {"source_format": suffix}
    if suffix == ".keras":
        return model, path, provenance
    target = work / "model.keras"
    converted = save_and_check(model, lambda batch: model(batch, training=False), target)
    return converted, target, provenance
