"""Models as users bring them from a notebook, imported with `save_models.py import` and served
by the real `bentoml serve`: every answer equals the model called directly on the same input.

The artifacts are made here with the libraries' own idioms (Keras layers and `model.save`,
scikit-learn pipelines fitted on pandas DataFrames), never with the project's helpers:

- a Keras CNN whose first (nested) layer is `Rescaling(1/255)`, saved as `.keras` and as `.h5`,
  and one with an adapted `Normalization` layer: served on raw pixels, not scaled twice;
- DataFrame-fitted pipelines for /heatflow and /falsetrue: served without sklearn's "X does not
  have valid feature names" warning, counted in the server log after a burst of requests;
- a 6,000-feature antibiotic model (MALDI-TOF spectra binned as in DRIAMS) beside the 16-feature
  reference panel: it answers with the default limits, and a request without `codes` asks the
  models of the vectors' length.

The API rounds probabilities to 4 decimals and heat flow to 3: answers are compared to the
direct call within that rounding plus 1e-5.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import (
    LiveServer,
    run_save_models,
    serve,
    stop_server,
)
from tests.image_samples import b64, encode

pytestmark = pytest.mark.integration

SIZE = 64
FEATURE_NAMES_WARNING = "does not have valid feature names"
HEADLINES = [
    ("El banco central publicó su informe trimestral de inflación.", 1),
    ("El ministerio de salud actualizó el calendario de vacunación.", 1),
    ("La universidad presentó los resultados del estudio climático.", 1),
    ("El parlamento aprobó la ley de presupuestos tras el debate.", 1),
    ("¡Los médicos odian este truco para adelgazar en tres días!", 0),
    ("Increíble: el agua con limón cura todas las enfermedades.", 0),
    ("Comparte antes de que lo borren: la verdad que ocultan.", 0),
    ("¡Gana dinero desde casa sin hacer nada, garantizado!", 0),
]
N_SPECTRUM_BINS = 6000


def photos() -> np.ndarray:
    """Six real photos at the model's input size: scikit-image's astronaut, coffee and cat,
    and scikit-learn's two sample photos, resized with Pillow; plus one mirrored."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    pictures = [data.astronaut(), data.coffee(), data.chelsea(), *load_sample_images().images]
    small = [np.asarray(Image.fromarray(p).resize((SIZE, SIZE))) for p in pictures]
    return np.stack([*small, small[0][:, ::-1]])


def rescaling_cnn() -> Any:
    """Keras' tutorial idiom: Rescaling(1/255) first, here inside a nested stem model."""
    import keras

    keras.utils.set_random_seed(13)
    stem = keras.Sequential(
        [
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        ],
        name="stem",
    )
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            stem,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(18, activation="softmax"),
        ]
    )
    return sharpen(model)


def normalization_cnn(images: np.ndarray) -> Any:
    """A Normalization layer adapted on the training pixels (0-255), as Keras documents it."""
    import keras

    keras.utils.set_random_seed(17)
    normalization = keras.layers.Normalization()
    normalization.adapt(images.astype(np.float32))
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            normalization,
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(18, activation="softmax"),
        ]
    )
    return sharpen(model)


def sharpen(model: Any) -> Any:
    """Larger last-layer weights, so that a wrongly scaled input changes the answer clearly
    (an untrained network answers nearly uniform probabilities to anything)."""
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 40.0, bias])
    return model


def direct(model: Any, batch: np.ndarray) -> np.ndarray:
    return np.asarray(model(batch.astype(np.float32), training=False), dtype=float)


@dataclass
class Notebook:
    """The artifacts as files, the same models loaded back as a user would, and the server."""

    folder: Path
    files: dict[str, Path]
    server: LiveServer
    home: str


def copy_reference_models(reference_store: str, home: Path) -> None:
    shutil.copytree(Path(reference_store) / "models", home / "models")


# The family each imported model serves, for `save_models.py promote`.
FAMILY_OF = {"flower_classifier": "flowers", "heatflow_svr": "heatflow"}
FAMILY_OF["falsetrue_classifier"] = "falsetrue"


def import_into(home: Path, name: str, artifact: Path, *flags: str) -> str:
    """Import, then serve it as a user does: an import is a candidate until promoted (a new
    antibiotic serves its first import at once)."""
    result = run_save_models("import", name, str(artifact), *flags, home=str(home))
    assert result.returncode == 0, result.stderr
    candidate = re.search(r"(\S+:\w+) is a candidate", " ".join(result.stdout.split()))
    if candidate:
        why = ("--why", "the notebook's model")
        promoted = run_save_models("promote", FAMILY_OF[name], candidate[1], *why, home=str(home))
        assert promoted.returncode == 0, promoted.stderr
    return result.stdout


@pytest.fixture(scope="module")
def notebook(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notebook]:
    import keras
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    folder = tmp_path_factory.mktemp("notebook")
    files = {
        "flowers.keras": folder / "flowers.keras",
        "heatflow.joblib": folder / "heatflow.joblib",
        "falsetrue.joblib": folder / "falsetrue.joblib",
        "spectra.keras": folder / "spectra.keras",
    }
    rescaling_cnn().save(files["flowers.keras"])

    rng = np.random.default_rng(5)
    thickness = pd.DataFrame({"sediment_thickness_m": rng.uniform(0, 12000, 300)})
    heat_flow = 45 + 55 * np.exp(-thickness["sediment_thickness_m"] / 2000)
    heatflow = make_pipeline(StandardScaler(), SVR(C=100.0)).fit(thickness, heat_flow)
    joblib.dump(heatflow, files["heatflow.joblib"])

    texts = pd.DataFrame({"headline": [text for text, _ in HEADLINES]})
    words = ColumnTransformer([("words", TfidfVectorizer(), "headline")])
    falsetrue = make_pipeline(words, LogisticRegression(C=10.0))
    falsetrue.fit(texts, [label for _, label in HEADLINES])
    joblib.dump(falsetrue, files["falsetrue.joblib"])

    keras.utils.set_random_seed(23)
    spectra = keras.Sequential(
        [
            keras.Input((N_SPECTRUM_BINS,), name="spectrum"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    spectra.save(files["spectra.keras"])

    home = folder / "bentoml"
    copy_reference_models(reference_store, home)
    import_into(home, "flower_classifier", files["flowers.keras"])
    import_into(home, "heatflow_svr", files["heatflow.joblib"])
    import_into(home, "falsetrue_classifier", files["falsetrue.joblib"])
    import_into(home, "modelo_MER_NM", files["spectra.keras"])
    # A server of its own: it serves the notebook's imported models, not the reference ones.
    server = serve(home, folder / "serve.log")
    try:
        yield Notebook(folder=folder, files=files, server=server, home=str(home))
    finally:
        stop_server(server.process)


def served_probabilities(server: LiveServer, images: np.ndarray) -> np.ndarray:
    """/flowers' confidence for each of the 18 classes, per image, in the model's order."""
    body = {"images": [b64(encode(image)) for image in images], "top_k": 18}
    response = server.post("/flowers", body)
    assert response.status_code == 200, response.text
    card = next(m for m in server.get("/models").json()["models"] if m["family"] == "flowers")
    classes = [entry["id"] for entry in card["metadata"]["classes"]]
    answers = np.zeros((len(images), len(classes)))
    for row, prediction in enumerate(response.json()["predictions"]):
        for entry in prediction["top_k"]:
            answers[row, classes.index(entry["class_id"])] = entry["confidence"]
    return answers


ROUNDED_4 = 0.5e-4 + 1e-5


def test_rescaling_model_answers_on_raw_pixels_not_scaled_twice(notebook: Notebook) -> None:
    import keras

    model = keras.models.load_model(notebook.files["flowers.keras"])
    images = photos()
    expected = direct(model, images)
    # The check could fail: the same model on pixels scaled twice answers differently.
    assert np.max(np.abs(direct(model, images / 255.0) - expected)) > 0.05
    served = served_probabilities(notebook.server, images)
    np.testing.assert_allclose(served, expected, atol=ROUNDED_4)


def test_models_show_the_preprocessing_decided_at_import(notebook: Notebook) -> None:
    models = {m["family"]: m for m in notebook.server.get("/models").json()["models"]}
    flowers = models["flowers"]
    assert flowers["preprocessing"].startswith("raw 0–255 (detected")
    assert "stem/rescaling" in flowers["preprocessing"]
    recorded = flowers["metadata"]["preprocessing"]
    assert recorded["scale"] == 1.0 and recorded["offset"] == 0.0
    assert recorded["decided_by"] == "detected" and recorded["size"] == [SIZE, SIZE]
    assert models["face_validator"]["preprocessing"] == "pixels / 255 (reference model)"
    panel = notebook.server.get("/antibiotics").json()["antibiotics"]
    assert {entry["code"]: entry["input_length"] for entry in panel}["MER"] == N_SPECTRUM_BINS


def test_dataframe_fitted_pipelines_answer_as_fitted(notebook: Notebook) -> None:
    heatflow = joblib.load(notebook.files["heatflow.joblib"])
    thickness = [0.0, 250.0, 1500.0, 6000.0, 11000.0]
    response = notebook.server.post("/heatflow", {"sediment_thickness_m": thickness})
    assert response.status_code == 200, response.text
    expected = heatflow.predict(pd.DataFrame({"sediment_thickness_m": thickness}))
    served = response.json()["heat_flow_mw_m2"]
    np.testing.assert_allclose(served, expected, atol=0.5e-3 + 1e-5)

    falsetrue = joblib.load(notebook.files["falsetrue.joblib"])
    texts = ["El banco central publicó su informe anual.", "¡Increíble truco que cura todo!"]
    response = notebook.server.post("/falsetrue", {"texts": texts})
    assert response.status_code == 200, response.text
    frame = pd.DataFrame({"headline": texts})
    assert response.json()["is_falsetrue"] == falsetrue.predict(frame).tolist()
    p_real = falsetrue.predict_proba(frame)[:, list(falsetrue.classes_).index(1)]
    np.testing.assert_allclose(response.json()["probability_real"], p_real, atol=ROUNDED_4)


def test_no_feature_name_warning_reaches_the_log_under_load(notebook: Notebook) -> None:
    calls = [
        ("/heatflow", {"sediment_thickness_m": [float(i * 37 % 12000)]}) for i in range(150)
    ] + [("/falsetrue", {"texts": [f"Titular número {i} del informe."]}) for i in range(150)]

    async def burst() -> list[int]:
        gate = asyncio.Semaphore(32)
        async with notebook.server.async_client(limits=httpx.Limits(max_connections=32)) as client:

            async def one(path: str, body: dict) -> int:
                async with gate:
                    return (await client.post(path, json=body)).status_code

            return await asyncio.gather(*(one(path, body) for path, body in calls))

    statuses = asyncio.run(burst())
    assert statuses == [200] * len(calls)
    # Every answer is in (the audit line is written before the last body chunk), so any
    # warning the runners printed for these calls is in the log by now.
    warnings = notebook.server.log_lines_with(FEATURE_NAMES_WARNING, wait_s=2)
    assert warnings == [], f"{len(warnings)} feature-name warnings in the log: {warnings[:2]}"


def test_six_thousand_feature_model_answers_with_the_default_limits(notebook: Notebook) -> None:
    import keras

    model = keras.models.load_model(notebook.files["spectra.keras"])
    spectra = np.random.default_rng(31).gamma(2.0, 0.01, size=(2, N_SPECTRUM_BINS))
    response = notebook.server.post(
        "/antibiotics", {"features": spectra.tolist(), "codes": ["MER"]}
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    served = [[p["probabilities"][c] for c in ("S", "I", "R")] for p in result["predictions"]]
    np.testing.assert_allclose(served, direct(model, spectra), atol=ROUNDED_4)


def test_request_without_codes_asks_the_models_of_its_vector_length(notebook: Notebook) -> None:
    server = notebook.server
    short = server.post("/antibiotics", {"features": [[1, 0] * 8]})
    assert short.status_code == 200, short.text
    assert [r["code"] for r in short.json()["results"]] == ["AMK", "AMP", "ATM", "CAS", "CAZ"]

    long = server.post("/antibiotics", {"features": [[0.01] * N_SPECTRUM_BINS]})
    assert long.status_code == 200, long.text
    assert [r["code"] for r in long.json()["results"]] == ["MER"]

    none = server.post("/antibiotics", {"features": [[0.5] * 7]})
    assert none.status_code == 422, none.text
    assert "no antibiotic model takes 7 values" in none.text
    assert "AMK: 16" in none.text and f"MER: {N_SPECTRUM_BINS}" in none.text

    mixed = server.post("/antibiotics", {"features": [[1.0] * 16, [1.0] * N_SPECTRUM_BINS]})
    assert mixed.status_code == 422, mixed.text
    assert mixed.json()["detail"][0]["loc"] == ["features", 1]
    assert "same length" in mixed.text


def flowers_card(server: LiveServer) -> dict:
    return next(m for m in server.get("/models").json()["models"] if m["family"] == "flowers")


def wait_until_flowers_serve(server: LiveServer, tag: str) -> dict:
    """The running server follows a promotion (the lifecycle's hot swap): its card, once it
    names `tag`."""
    deadline = time.monotonic() + 120
    while (card := flowers_card(server))["tag"] != tag:
        assert time.monotonic() < deadline, f"still serving {card['tag']}, not {tag}"
        time.sleep(0.5)
    return card


@pytest.mark.parametrize("kind", ["rescaling-h5", "normalization"])
def test_other_preprocessing_models_answer_as_in_the_notebook(
    notebook: Notebook, tmp_path: Path, kind: str
) -> None:
    """The Rescaling model saved as legacy .h5, and one with an adapted Normalization layer,
    each imported and promoted into the running notebook server (one flower model is served
    at a time), which swaps it in; the notebook's own flower model is promoted back after."""
    import keras

    images = photos()
    if kind == "rescaling-h5":
        artifact = tmp_path / "flowers.h5"
        rescaling_cnn().save(artifact)
        expected_summary = "raw 0–255 (detected, in the model: stem/rescaling"
    else:
        artifact = tmp_path / "flowers.keras"
        normalization_cnn(images).save(artifact)
        expected_summary = "raw 0–255 (detected, in the model: normalization"
    model = keras.models.load_model(artifact)
    expected = direct(model, images)
    assert np.max(np.abs(direct(model, images / 255.0) - expected)) > 0.05

    server = notebook.server
    before = flowers_card(server)["tag"]
    said = import_into(Path(notebook.home), "flower_classifier", artifact)
    (imported,) = re.findall(r"(flower_classifier:\w+) is a candidate", " ".join(said.split()))
    try:
        flowers = wait_until_flowers_serve(server, imported)
        assert flowers["preprocessing"].startswith(expected_summary), flowers["preprocessing"]
        np.testing.assert_allclose(served_probabilities(server, images), expected, atol=ROUNDED_4)
    finally:
        why = ("--why", "back to the notebook's model")
        back = run_save_models("promote", "flowers", before, *why, home=notebook.home)
        assert back.returncode == 0, back.stderr
        wait_until_flowers_serve(server, before)
