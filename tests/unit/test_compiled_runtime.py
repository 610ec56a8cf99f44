"""Compiled runtimes (despliegue/compiled_runtime.py): a Keras model's ONNX export is served only
once it answers like the Keras model on the probe inputs, and a runner serving it needs no
TensorFlow; an export that differs, cannot run, or changed since it was checked is left to
TensorFlow, with the reason on the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from despliegue.compiled_runtime import (
    COMPILED_FILE,
    TOLERANCE,
    OnnxModel,
    check_compiled,
    compile_beside,
)
from tests.conftest import fresh_interpreter_json, run_save_models

CARD = {"preprocessing": {"size": [32, 32], "scale": 1.0, "offset": 0.0}}


def user_cnn(*preprocessing: object) -> object:
    """A notebook-style flower model that scales its own input in the graph."""
    import keras

    keras.utils.set_random_seed(30)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            *preprocessing,
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(18, activation="softmax"),
        ]
    )


def stored_keras(model: object, folder: Path) -> Path:
    artifact = folder / "model.keras"
    model.save(artifact)
    return artifact


def test_export_answers_like_keras_on_probes_and_real_photos(tmp_path: Path) -> None:
    model = user_cnn()
    entry = compile_beside(model, stored_keras(model, tmp_path), CARD)

    assert entry["runtime"] == "onnxruntime", entry.get("reason")
    # 2 conversion probes + 3 × 4 random + 20 real photos (scikit-learn's, whole and in parts).
    assert entry["probe_inputs"] == 34
    assert entry["max_abs_difference"] <= TOLERANCE
    assert entry["tf2onnx_version"] and entry["runtime_version"] and entry["keras_version"]
    compiled = OnnxModel(tmp_path / COMPILED_FILE)
    pixels = np.random.default_rng(5).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        compiled(pixels), np.asarray(model(pixels, training=False)), atol=TOLERANCE
    )


def test_an_altered_export_is_refused_back_to_tensorflow(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = user_cnn()
    assert compile_beside(model, stored_keras(model, tmp_path), CARD)["runtime"] == "onnxruntime"
    exported = tmp_path / COMPILED_FILE
    graph = onnx.load(exported)
    kernels = [w for w in graph.graph.initializer if w.data_type == onnx.TensorProto.FLOAT]
    for weights in kernels:  # every float weight shifted: what a damaged file could hold
        altered = numpy_helper.to_array(weights) + 0.5
        weights.CopyFrom(numpy_helper.from_array(altered.astype(np.float32), weights.name))
    onnx.save(graph, exported)

    entry = check_compiled(model, exported, CARD)

    assert entry["runtime"] == "tensorflow", entry
    assert "differs from the Keras model" in entry["reason"]
    assert entry["max_abs_difference"] > TOLERANCE
    assert not exported.exists()  # the store never keeps an export it does not serve


def test_an_adapted_normalization_is_exported_with_its_statistics(tmp_path: Path) -> None:
    """tf2onnx makes an adapted Normalization layer's mean and variance graph inputs a caller
    would have to feed; the export writes them in as constants, so it answers alone."""
    import keras
    import onnx

    normalization = keras.layers.Normalization()
    normalization.adapt(np.random.default_rng(1).uniform(0, 1, (16, 32, 32, 3)))
    model = user_cnn(normalization)

    entry = compile_beside(model, stored_keras(model, tmp_path), CARD)

    assert entry["runtime"] == "onnxruntime", entry.get("reason")
    assert entry["max_abs_difference"] <= TOLERANCE
    assert len(onnx.load(tmp_path / COMPILED_FILE).graph.input) == 1


def test_an_export_the_runtime_cannot_run_is_refused(tmp_path: Path) -> None:
    model = user_cnn()
    exported = tmp_path / COMPILED_FILE
    exported.write_bytes(b"not an onnx graph")

    entry = check_compiled(model, exported, CARD)

    assert entry["runtime"] == "tensorflow"
    assert entry["reason"].startswith("ONNX Runtime cannot run the export")


# Loads the stored flower model as a runner does, in a fresh interpreter.
SERVE = """
import json, sys
import bentoml, numpy as np
from despliegue.artifacts import load_artifact, model_card
from despliegue.tensorflow_runtime import CompiledImageModel
stored = bentoml.models.get("flower_classifier:latest")
card = model_card(stored)
pixels = np.random.default_rng(6).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
answers = CompiledImageModel(load_artifact(stored), card)(list(pixels))
print(json.dumps({"runtime": card.runtime, "reason": card.runtime_reason,
                  "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "answers": answers.tolist()}))
"""


def served(home: Path) -> dict:
    return fresh_interpreter_json(SERVE, home)


@pytest.mark.processes
def test_an_imported_model_is_served_compiled_without_tensorflow(tmp_path: Path) -> None:
    """Import checks the export; the runner's load then needs neither TensorFlow nor Keras,
    and answers as the Keras model; an export changed in the store falls back to TensorFlow."""
    from despliegue.images import resize
    from despliegue.preprocessing import ImagePreprocessing

    model = user_cnn()
    artifact = tmp_path / "notebook_flowers.keras"
    model.save(artifact)
    home = tmp_path / "bentoml"
    result = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    assert "served by onnxruntime" in " ".join(result.stdout.split())

    pixels = np.random.default_rng(6).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    (card_file,) = home.glob("models/flower_classifier/*/model.yaml")
    import yaml

    recorded = yaml.safe_load(card_file.read_text())["metadata"]
    preprocessing = ImagePreprocessing.from_metadata(recorded["preprocessing"])
    batch = np.stack([resize(image, preprocessing.size) for image in pixels])
    expected = np.asarray(model(preprocessing.apply(batch), training=False))

    compiled = served(home)
    assert compiled["runtime"] == "onnxruntime", compiled["reason"]
    assert not compiled["tensorflow"] and not compiled["keras"]
    np.testing.assert_allclose(compiled["answers"], expected, atol=TOLERANCE)

    exported = card_file.parent / recorded["compiled"]["file"]
    exported.write_bytes(exported.read_bytes() + b"\0")
    fallback = served(home)
    assert fallback["runtime"] == "tensorflow" and "sha256 differs" in fallback["reason"]
    assert fallback["tensorflow"]
    np.testing.assert_allclose(fallback["answers"], expected, atol=TOLERANCE)


def test_a_panel_member_answers_the_same_compiled(tmp_path: Path) -> None:
    """The antibiotic runner's member, standardising its features, on the export and on Keras."""
    from datetime import UTC, datetime

    import keras

    from despliegue.contracts import ModelCard
    from runners.antibiotics import PanelMember

    keras.utils.set_random_seed(31)
    model = keras.Sequential(
        [keras.Input((40,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    entry = compile_beside(model, stored_keras(model, tmp_path), {})
    assert entry["runtime"] == "onnxruntime", entry.get("reason")
    assert entry["probe_inputs"] == 14  # no photos for a model that takes no image
    rng = np.random.default_rng(9)
    preprocessing = {"kind": "standardize", "mean": rng.normal(size=40).tolist(), "std": [2.0] * 40}
    card = ModelCard(
        tag="modelo_amk_nm:1",
        family="antibiotics",
        framework="keras",
        reference=True,
        created=datetime.now(UTC),
        metadata={"preprocessing": preprocessing},
    )
    features = rng.normal(size=(5, 40)).astype(np.float32)

    on_keras = PanelMember.prepare(model, card).probabilities(features)
    compiled = PanelMember.prepare(OnnxModel(tmp_path / COMPILED_FILE), card)

    np.testing.assert_allclose(compiled.probabilities(features), on_keras, atol=TOLERANCE)
