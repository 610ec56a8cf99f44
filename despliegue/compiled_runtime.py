"""Compiled runtime: a stored Keras model served by ONNX Runtime instead of TensorFlow.

The `.keras` file stays the source of truth in the store. When a Keras model enters the store
(a reference build or an import), it is exported to ONNX (tf2onnx on one traced call of the
model, as Keras' own ONNX export does) into `model.onnx` beside it, and the export is checked
against the Keras model on probe inputs: the conversion probe, random values, and real photos
prepared as the model card says (for image models). Only an export within 1e-4 absolute on
every output is kept; its converter and runtime versions, the largest difference and its
sha256 go on the model card (metadata `compiled`). A model that fails to export or differs
keeps `runtime: tensorflow` and the reason, and is served by TensorFlow as before.

Why ONNX Runtime: measured against TensorFlow and OpenVINO on the stored models, one core
(benchmarks/runtimes.py, docs in README "Compiled runtimes"). Serving an exported model needs
neither TensorFlow nor Keras, so a runner whose models are all compiled starts without them.

Exporting imports TensorFlow (build side only); `OnnxModel` and `serving_runtime` do not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

COMPILED_FILE = "model.onnx"
RUNTIME = "onnxruntime"
TOLERANCE = 1e-4
OPSET = 17
# Random probe inputs per kind of values (uniform 0..1, uniform 0..255, standard normal).
RANDOM_PROBES = 4


class OnnxModel:
    """An exported model in ONNX Runtime: called on a float32 batch, answers its first output
    as a numpy array (what `model(batch)` answers for the Keras model)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: the runner shares its cores with the
        # API worker and the other runners, and with more threads than free cores the spin
        # took the CPU the model needed (flower CNN on one core, 2 threads: 2,500 items/s
        # spinning, 5,000 without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are not news
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.input_shape = tuple(self._session.get_inputs()[0].shape[1:])

    def __call__(self, batch: Any) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: Any) -> list[np.ndarray]:
        """Every output, in the graph's order (MTCNN's networks answer two or three)."""
        feed = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
        return self._session.run(None, {self._input: feed})


def export_onnx(model: Any, target: Path) -> None:
    """Write `model` (Keras 3, TensorFlow backend) as ONNX at `target`, through tf2onnx on one
    traced call of the model (what Keras' own ONNX export does), float32 input.

    tf2onnx turns tensors the traced call captures that are not variables (an adapted
    `Normalization` layer's mean and variance) into graph inputs a caller would have to feed;
    they are written into the graph as constants instead, so the export answers alone."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    spec = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="inputs")]
    forward = tf.function(lambda batch: model(batch, training=False), input_signature=spec)
    captured = {
        inner.name: outer for outer, inner in forward.get_concrete_function().graph.captures
    }
    graph, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    constants = [
        entry.name
        for entry in graph.graph.input[1:]
        if entry.name in captured and captured[entry.name].dtype != tf.resource
    ]
    for name in constants:
        graph.graph.initializer.append(numpy_helper.from_array(captured[name].numpy(), name))
    inputs = [entry for entry in graph.graph.input if entry.name not in constants]
    del graph.graph.input[:]
    graph.graph.input.extend(inputs)
    onnx.save(graph, str(target))


def converter_versions() -> dict[str, str]:
    """The versions an export and its check ran with, for the model card."""
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "converter": f"tf2onnx.convert.from_function (opset {OPSET})",
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "onnx_version": onnx.__version__,
        "runtime_version": onnxruntime.__version__,
    }


def probe_inputs(model: Any, metadata: dict[str, Any]) -> np.ndarray:
    """Inputs the export must answer like the Keras model: the conversion probe (0..255),
    random values of three kinds, and, for an image model, real photos (whole, quadrants,
    mirrored) prepared as its card records."""
    from despliegue.keras_conversion import probe_batch

    shape = tuple(8 if size is None else int(size) for size in model.inputs[0].shape[1:])
    rng = np.random.default_rng(30)
    parts = [
        probe_batch(model),
        rng.uniform(0, 1, size=(RANDOM_PROBES, *shape)),
        rng.uniform(0, 255, size=(RANDOM_PROBES, *shape)),
        rng.standard_normal(size=(RANDOM_PROBES, *shape)),
    ]
    preprocessing = metadata.get("preprocessing")
    if len(shape) == 3 and isinstance(preprocessing, dict) and "size" in preprocessing:
        from despliegue.families.image_models import sample_images
        from despliegue.preprocessing import ImagePreprocessing

        prepared = ImagePreprocessing.from_metadata(preprocessing)
        if tuple(prepared.size) == shape[:2]:
            parts.append(prepared.apply(sample_images(prepared.size)))
    return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts])


def largest_difference(model: Any, compiled: Callable[[np.ndarray], Any], inputs: Any) -> float:
    """Largest absolute difference between the Keras model's outputs and the compiled ones
    (infinite when the shapes differ or an output is not finite where Keras' is)."""
    expected = np.asarray(model(inputs, training=False), dtype=np.float64)
    answered = np.asarray(compiled(inputs), dtype=np.float64)
    if expected.shape != answered.shape:
        return float("inf")
    difference = np.abs(answered - expected)
    return float(np.nanmax(np.where(np.isnan(difference), np.inf, difference)))


def check_compiled(model: Any, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The card's `compiled` entry for the export at `path`: served by ONNX Runtime when it
    answers like `model` to 1e-4 on every output of every probe input, else TensorFlow and why.
    A refused export is deleted, so the store never holds a file that is not served."""
    from despliegue.artifacts import sha256_of

    inputs = probe_inputs(model, metadata)
    try:
        difference = largest_difference(model, OnnxModel(path), inputs)
    except Exception as exc:  # the runtime cannot load or run what was written
        path.unlink(missing_ok=True)
        return refused(f"ONNX Runtime cannot run the export: {_reason(exc)}")
    versions = converter_versions()
    checked = {
        "probe_inputs": len(inputs),
        # A number a model card's JSON can carry; None when the outputs cannot be compared.
        "max_abs_difference": difference if math.isfinite(difference) else None,
        **versions,
    }
    if not difference <= TOLERANCE:
        path.unlink(missing_ok=True)
        return refused(
            f"the export differs from the Keras model by up to {difference:.3g} on "
            f"{len(inputs)} probe inputs (tolerance {TOLERANCE:g})",
            **checked,
        )
    return {
        "runtime": RUNTIME,
        "file": path.name,
        "sha256": sha256_of(path),
        "tolerance": TOLERANCE,
        **checked,
    }


def compile_beside(model: Any, artifact: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Export `model` (the Keras model stored at `artifact`) beside it and check the export:
    the card's `compiled` entry (see check_compiled); never raises."""
    target = artifact.parent / COMPILED_FILE
    try:
        export_onnx(model, target)
    except Exception as exc:  # the converter does not handle this model
        target.unlink(missing_ok=True)
        return refused(f"the ONNX export failed: {_reason(exc)}")
    return check_compiled(model, target, metadata)


def refused(reason: str, **details: Any) -> dict[str, Any]:
    return {**details, "runtime": "tensorflow", "reason": reason}


def serving_runtime(metadata: dict[str, Any], folder: Path, enabled: bool) -> tuple[str, str]:
    """(runtime, why) a stored Keras model is served with: ONNX Runtime when its verified
    export is present and unchanged and compiled serving is on; TensorFlow otherwise."""
    compiled = metadata.get("compiled")
    if not isinstance(compiled, dict):
        return "tensorflow", "stored without a compiled form (imported before compiled runtimes)"
    if compiled.get("runtime") != RUNTIME or "file" not in compiled:
        return "tensorflow", str(compiled.get("reason", "no verified compiled form"))
    if not enabled:
        return "tensorflow", "compiled serving is off (configuration.yaml tensorflow.compiled)"
    problem = changed_file(folder / compiled["file"], compiled.get("sha256"))
    if problem:
        return "tensorflow", problem
    return RUNTIME, (
        f"export checked against the Keras model on {compiled.get('probe_inputs')} inputs, "
        f"largest difference {float(compiled.get('max_abs_difference') or 0.0):.2g}"
    )


def changed_file(path: Path, recorded_sha256: Any) -> str | None:
    """Why a compiled file cannot be served as checked (unreadable, or not the file whose sum
    was recorded when it was checked), or None."""
    from despliegue.artifacts import sha256_of

    try:
        actual = sha256_of(path)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if actual != recorded_sha256:
        return f"{path}: sha256 differs from the one recorded when it was checked"
    return None


def onnx_threads() -> int:
    """ONNX Runtime's intra-op threads: the TensorFlow pool size configured for runners."""
    from despliegue.config import settings

    threads = settings().tensorflow.intra_op_threads
    return threads if threads > 0 else max(1, len(os.sched_getaffinity(0)))


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 300 else f"{first[:300]}…"
