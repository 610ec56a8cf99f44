"""Keras artifacts through `save_models.py import`: probe-then-commit, as for sklearn ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, run_save_models

# Building Keras models needs TensorFlow: do it in a child process, as a user would.
MAKE_MODEL = """
import sys, keras
outputs, path = int(sys.argv[1]), sys.argv[2]
model = keras.Sequential([keras.Input(shape=(96, 96, 3)), keras.layers.Conv2D(4, 3, strides=4),
    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(outputs, activation="softmax")])
model.save(path)
"""


def keras_model(path: Path, outputs: int) -> Path:
    subprocess.run(
        [sys.executable, "-c", MAKE_MODEL, str(outputs), str(path)], check=True, cwd=ROOT
    )
    return path


def stored_metadata(home: Path, name: str) -> list[dict]:
    folder = home / "models" / name
    return [yaml.safe_load(p.read_text())["metadata"] for p in folder.glob("*/model.yaml")]


@pytest.mark.processes
def test_legacy_h5_flower_model_with_its_own_input_size_imports(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    artifact = keras_model(tmp_path / "my_flowers.h5", outputs=18)
    result = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    (metadata,) = stored_metadata(home, "flower_classifier")
    assert metadata["reference"] is False and metadata["source_format"] == ".h5"
    assert metadata["preprocessing"]["size"] == [96, 96]
    assert len(metadata["classes"]) == 18
    # The store keeps one Keras format whatever came in, and its export checked against it.
    assert list((home / "models" / "flower_classifier").glob("*/model.keras"))
    assert metadata["compiled"]["runtime"] == "onnxruntime", metadata["compiled"]
    assert metadata["compiled"]["max_abs_difference"] <= 1e-4
    assert list((home / "models" / "flower_classifier").glob("*/model.onnx"))
    assert "served by onnxruntime" in " ".join(result.stdout.split())


@pytest.mark.processes
def test_keras_model_with_the_wrong_outputs_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    artifact = keras_model(tmp_path / "ten_classes.keras", outputs=10)
    result = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert result.returncode == 1
    assert "ten_classes.keras" in result.stderr and "(2, 18)" in result.stderr
    assert "store is unchanged" in result.stderr
    assert not (home / "models" / "flower_classifier").exists()


# --- Preprocessing decided at import (despliegue/families/image_models.py) -------------------


def small_cnn(*first_layers) -> object:
    import keras

    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            *first_layers,
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(18, activation="softmax"),
        ]
    )


def decided(model: object, declared: dict | None = None):
    from despliegue.families.image_models import decide_preprocessing
    from despliegue.preprocessing import PRESETS

    return decide_preprocessing(model, declared, PRESETS["unit"])


def test_rescaling_at_any_depth_means_raw_pixels() -> None:
    import keras

    stem = keras.Sequential(
        [keras.Sequential([keras.layers.Rescaling(1 / 255, name="scale")], name="inner")],
        name="outer",
    )
    choice = decided(small_cnn(stem))
    assert choice.is_raw() and choice.decided_by == "detected"
    assert choice.in_model == ("outer/inner/scale (Rescaling × 0.00392157 + 0)",)


def test_keras_applications_preprocessing_layers_are_found() -> None:
    """MobileNetV3 with include_preprocessing=True, nested as a backbone the Keras way."""
    import keras

    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, include_preprocessing=True
    )
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            backbone,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(18, activation="softmax"),
        ]
    )
    choice = decided(model)
    assert choice.is_raw() and choice.decided_by == "detected"
    assert choice.in_model[0].startswith(f"{backbone.name}/rescaling")


def test_normalization_decides_by_the_data_it_was_adapted_on() -> None:
    import keras

    pixels = np.random.default_rng(0).uniform(0, 255, (20, 32, 32, 3)).astype(np.float32)
    on_pixels = keras.layers.Normalization()
    on_pixels.adapt(pixels)
    raw = decided(small_cnn(on_pixels))
    assert raw.is_raw() and raw.in_model[0].startswith("normalization")
    on_unit = keras.layers.Normalization(name="unit_norm")
    on_unit.adapt(pixels / 255)
    unit = decided(small_cnn(on_unit))
    assert unit.scale == pytest.approx(1 / 255) and unit.decided_by == "detected"
    assert "adapted on values in 0..1" in unit.note


def test_no_preprocessing_layer_keeps_the_default_and_declared_wins() -> None:
    import keras

    plain = decided(small_cnn())
    assert plain.decided_by == "default" and plain.scale == pytest.approx(1 / 255)
    assert plain.in_model == ()
    overridden = decided(small_cnn(keras.layers.Rescaling(1 / 255)), {"preset": "unit"})
    assert overridden.decided_by == "declared" and overridden.scale == pytest.approx(1 / 255)
    assert overridden.in_model  # what was found stays on record


@pytest.mark.processes
def test_import_warns_when_outputs_hardly_change_and_names_the_fix(tmp_path: Path) -> None:
    """Forcing pixels / 255 on a model that rescales itself scales twice: the probe on real
    photos sees near-constant outputs and the summary says which preset makes them vary."""
    import keras

    keras.utils.set_random_seed(3)
    model = small_cnn(keras.layers.Rescaling(1 / 255))
    artifact = tmp_path / "rescales.keras"
    model.save(artifact)
    home = tmp_path / "bentoml"
    result = run_save_models(
        "import", "flower_classifier", str(artifact), "--preprocessing", "unit", home=str(home)
    )
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "warning: flower_classifier: outputs are near-constant over 20 different photos" in said
    assert "--preprocessing raw" in said
    (metadata,) = stored_metadata(home, "flower_classifier")
    assert metadata["preprocessing"]["decided_by"] == "declared"

    detected = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert detected.returncode == 0, detected.stderr
    assert "warning" not in detected.stderr
    assert "raw 0–255 (detected" in " ".join(detected.stdout.split())
    # The in-graph Rescaling goes through the same check as any export.
    assert "served by onnxruntime" in " ".join(detected.stdout.split())


@pytest.mark.processes
def test_preprocessing_flags_are_refused_for_models_that_take_none(tmp_path: Path) -> None:
    import joblib
    from sklearn.dummy import DummyRegressor

    artifact = tmp_path / "dummy.joblib"
    joblib.dump(DummyRegressor().fit([[0.0], [1.0]], [1.0, 2.0]), artifact)
    home = tmp_path / "bentoml"
    result = run_save_models(
        "import", "heatflow_svr", str(artifact), "--scale", "1/255", home=str(home)
    )
    assert result.returncode == 1
    assert "a heatflow model takes no declared preprocessing" in result.stderr
    # Nothing stored (BentoML makes the store's empty folders when it is first opened).
    assert not list((home / "models").glob("*/*"))


# --- TensorFlow SavedModels, converted to a self-contained .keras (keras_conversion.py) -------


def save_tf_module(path: Path, inputs: int = 1) -> None:
    """A plain tf.Module with a serving signature, as tf.saved_model.save users write one."""
    import tensorflow as tf

    class Classifier(tf.Module):
        def __init__(self) -> None:
            rng = np.random.default_rng(4)
            self.kernel = tf.Variable(rng.normal(0, 0.01, (32 * 32 * 3, 18)), dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def classify(self, pixels: tf.Tensor) -> dict:
            flat = tf.reshape(pixels, [-1, 32 * 32 * 3])
            return {"probabilities": tf.nn.softmax(flat @ self.kernel), "logits": flat}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 32, 32, 3], tf.float32),
                tf.TensorSpec([None], tf.float32),
            ]
        )
        def two(self, pixels: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
            return self.classify(pixels)["probabilities"] * weight[:, None]

    module = Classifier()
    chosen = module.classify if inputs == 1 else module.two
    tf.saved_model.save(module, str(path), signatures={"serving_default": chosen})


@pytest.mark.processes
def test_saved_model_folders_import_as_a_self_contained_keras_file(tmp_path: Path) -> None:
    import tensorflow as tf

    home = tmp_path / "bentoml"
    exported = tmp_path / "exported"
    keras_model = small_cnn()
    keras_model.export(str(exported))  # Keras' own SavedModel export
    module = tmp_path / "module"
    save_tf_module(module)
    pixels = np.random.default_rng(8).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    expected = {
        "exported": keras_model(pixels / 255, training=False).numpy(),
        "module": tf.saved_model.load(str(module))
        .signatures["serving_default"](pixels=tf.constant(pixels / 255))["probabilities"]
        .numpy(),
    }
    for folder in (exported, module):
        result = run_save_models("import", "flower_classifier", str(folder), home=str(home))
        assert result.returncode == 0, result.stderr
    shutil.rmtree(exported)
    shutil.rmtree(module)  # the stored file must not need the folders any more

    infos = sorted(
        (yaml.safe_load(p.read_text()) for p in home.glob("models/flower_classifier/*/model.yaml")),
        key=lambda info: info["creation_time"],
    )
    from despliegue.artifacts import LOADERS

    for info, name in zip(infos, ("exported", "module"), strict=True):
        meta = info["metadata"]
        assert meta["source_format"] == "SavedModel" and meta["saved_model_signature"]
        if name == "module":
            assert meta["saved_model_input"] == "pixels"
            assert meta["saved_model_output"] == "probabilities"  # picked among two outputs
        assert meta["compiled"]["runtime"] == "onnxruntime"
        stored = home / "models" / "flower_classifier" / info["version"] / "model.keras"
        model = LOADERS["keras"](stored)
        np.testing.assert_allclose(model(pixels / 255).numpy(), expected[name], atol=1e-6)


@pytest.mark.processes
def test_saved_model_with_two_inputs_is_refused_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "two_inputs"
    save_tf_module(folder, inputs=2)
    home = tmp_path / "bentoml"
    result = run_save_models("import", "flower_classifier", str(folder), home=str(home))
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "takes 2 inputs (['pixels', 'weight'])" in said and "store is unchanged" in said
    assert not (home / "models" / "flower_classifier").exists()
