"""Keras artifacts through `save_models.py import`: probe-then-commit, as for sklearn ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_legacy_h5_flower_model_with_its_own_input_size_imports(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    artifact = keras_model(tmp_path / "my_flowers.h5", outputs=18)
    result = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    (metadata,) = stored_metadata(home, "flower_classifier")
    assert metadata["reference"] is False and metadata["source_format"] == ".h5"
    assert metadata["preprocessing"]["size"] == [96, 96]
    assert len(metadata["classes"]) == 18
    # The store keeps one Keras format whatever came in.
    assert list((home / "models" / "flower_classifier").glob("*/model.keras"))


def test_keras_model_with_the_wrong_outputs_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    artifact = keras_model(tmp_path / "ten_classes.keras", outputs=10)
    result = run_save_models("import", "flower_classifier", str(artifact), home=str(home))
    assert result.returncode == 1
    assert "ten_classes.keras" in result.stderr and "(2, 18)" in result.stderr
    assert "store is unchanged" in result.stderr
    assert not (home / "models" / "flower_classifier").exists()
