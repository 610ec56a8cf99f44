"""Every way a panel model comes out of a real MLflow tracking server (the session's, on
PostgreSQL: tests/integration/conftest.py), imported through save_models.py: every URI form
MLflow resolves (version, alias, stage, latest, model id, run, folder) recorded with its version,
stage and aliases; both TensorFlow flavours (`mlflow.tensorflow.log_model` of a Keras model and of
a tf.Module SavedModel) converted, served, and answering as the logged models do; a local MLflow
folder with its run; and the refusals, which leave the store unchanged.

A module apart from test_mlflow_panel.py so that the two run on both cores (each ~3 minutes).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import run_save_models, stop_server
from tests.integration.conftest import Registry, store_without_panel
from tests.integration.test_mlflow_panel import (
    CLASSES,
    N_FEATURES,
    NAME,
    log_version,
    register_version,
    serve_store,
)

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip(
    "mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)"
)


def test_local_mlflow_folder_imports_with_its_run(registry: Registry, tmp_path: Path) -> None:
    version = register_version(bias=1, alias="staging")
    folder = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=tmp_path)
    home = str(tmp_path / "bentoml")
    result = run_save_models("import", "modelo_LVX_NM", folder, home=home)
    assert result.returncode == 0, result.stderr
    (stored,) = (Path(home) / "models" / "modelo_lvx_nm").glob("*/model.yaml")
    info = yaml.safe_load(stored.read_text())
    run_id = yaml.safe_load((Path(folder) / "MLmodel").read_text())["run_id"]
    assert info["labels"]["mlflow_run_id"] == run_id and info["labels"]["source"] == "mlflow"
    assert info["metadata"]["classes"] == CLASSES and info["metadata"]["code"] == "LVX"


def test_refusals_leave_the_store_unchanged(registry: Registry, tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    register_version(bias=0, alias="any")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]),
            name="model",
            registered_model_name="modelo_SKL_NM",
        )
    home = str(tmp_path / "bentoml")
    missing = run_save_models("import", NAME, f"models:/{NAME}@no_such_alias", home=home)
    assert missing.returncode == 1 and "not found in the registry" in missing.stderr
    bad_name = run_save_models("import", "modelo_cip", f"models:/{NAME}/1", home=home)
    assert bad_name.returncode == 1 and "unknown model name" in bad_name.stderr
    no_stage = run_save_models("import", NAME, f"models:/{NAME}/Archived", home=home)
    assert no_stage.returncode == 1
    assert f"no version of {NAME} is in stage 'Archived'" in " ".join(no_stage.stderr.split())
    sklearn_flavour = run_save_models(
        "import", "modelo_SKL_NM", "models:/modelo_SKL_NM/1", home=home
    )
    said = " ".join(sklearn_flavour.stderr.split())
    assert sklearn_flavour.returncode == 1
    assert (
        "no keras or tensorflow flavour in MLmodel (flavours: ['python_function', 'sklearn'])"
        in said
    )
    assert not (Path(home) / "models").exists() or not any((Path(home) / "models").iterdir())


def newest_labels(home: Path, name: str) -> dict[str, str]:
    infos = [
        yaml.safe_load(p.read_text()) for p in home.glob(f"models/{name.lower()}/*/model.yaml")
    ]
    return max(infos, key=lambda info: info["creation_time"])["labels"]


def test_every_uri_form_records_version_stage_and_aliases(
    registry: Registry, tmp_path: Path
) -> None:
    """models:/NAME/STAGE (any case), models:/NAME/latest, runs:/RUN/PATH and models:/MODEL_ID,
    as MLflow resolves them; version, stage and aliases end up in the stored model's labels."""
    client = mlflow.MlflowClient()
    production = log_version(bias=2, alias="champion")
    staging = log_version(bias=0, alias="challenger")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages: deprecated, still resolved
        client.transition_model_version_stage(
            NAME, production.registered_model_version, "Production"
        )
        client.transition_model_version_stage(NAME, staging.registered_model_version, "Staging")
    newest = str(max(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")))
    cases = [
        (
            f"models:/{NAME}/Production",
            {
                "mlflow_version": str(production.registered_model_version),
                "mlflow_stage": "Production",
                "mlflow_alias": "champion",
                "mlflow_run_id": production.run_id,
            },
        ),
        (
            f"models:/{NAME}/staging",
            {
                "mlflow_version": str(staging.registered_model_version),
                "mlflow_stage": "Staging",
                "mlflow_alias": "challenger",
            },
        ),
        (f"models:/{NAME}/latest", {"mlflow_version": newest, "mlflow_name": NAME}),
        (f"runs:/{production.run_id}/model", {"mlflow_run_id": production.run_id}),
        (f"models:/{staging.model_id}", {"mlflow_model_id": staging.model_id}),
    ]
    home = tmp_path / "bentoml"
    for uri, expected in cases:
        result = run_save_models("import", NAME, uri, home=str(home))
        assert result.returncode == 0, f"{uri}: {result.stderr}"
        labels = newest_labels(home, NAME)
        assert labels["source"] == "mlflow"
        assert {key: labels.get(key) for key in expected} == expected, uri


def test_tensorflow_flavours_are_converted_and_answer_as_logged(
    registry: Registry, reference_store: str, tmp_path: Path
) -> None:
    """`mlflow.tensorflow.log_model` of a Keras model (data/model.keras) and of a tf.Module
    (a SavedModel, converted at import), imported by stage and by `latest`, then served."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(29)
    classifier = keras.Sequential(
        [keras.Input((N_FEATURES,)), keras.layers.Dense(len(CLASSES), activation="softmax")]
    )
    kernel, bias = classifier.layers[0].get_weights()
    classifier.layers[0].set_weights([kernel * 8, bias])

    class Scorer(tf.Module):
        def __init__(self) -> None:
            self.kernel = tf.Variable(np.random.default_rng(3).normal(0, 2, (N_FEATURES, 3)))

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32)])
        def __call__(self, genes: tf.Tensor) -> tf.Tensor:
            return tf.nn.softmax(genes @ tf.cast(self.kernel, tf.float32))

    scorer = Scorer()
    with mlflow.start_run():
        keras_info = mlflow.tensorflow.log_model(
            classifier, name="model", registered_model_name="modelo_TFK_NM",
            metadata={"classes": CLASSES},
        )  # fmt: skip
    with mlflow.start_run():
        mlflow.tensorflow.log_model(
            scorer, name="model", registered_model_name="modelo_TFM_NM",
            metadata={"classes": CLASSES},
        )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mlflow.MlflowClient().transition_model_version_stage(
            "modelo_TFK_NM", keras_info.registered_model_version, "Production"
        )
    home = store_without_panel(reference_store, tmp_path / "bentoml")
    for name, uri in (
        ("modelo_TFK_NM", "models:/modelo_TFK_NM/Production"),
        ("modelo_TFM_NM", "models:/modelo_TFM_NM/latest"),
    ):
        result = run_save_models("import", name, uri, home=home)
        assert result.returncode == 0, f"{uri}: {result.stderr}"

    vectors = np.random.default_rng(11).uniform(0, 1, (3, N_FEATURES)).astype(np.float32)
    expected = {
        "TFK": classifier(vectors, training=False).numpy(),
        "TFM": scorer(tf.constant(vectors)).numpy(),
    }
    server = serve_store(home, tmp_path)
    try:
        body = {"features": vectors.tolist(), "codes": ["TFK", "TFM"]}
        response = server.post("/antibiotics", body)
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            served = [[p["probabilities"][c] for c in CLASSES] for p in result["predictions"]]
            np.testing.assert_allclose(served, expected[result["code"]], atol=0.5e-4 + 1e-5)
        cards = {
            card["metadata"]["code"]: card
            for card in server.get("/models").json()["models"]
            if card["family"] == "antibiotics"
        }
        assert cards["TFK"]["metadata"]["mlflow_flavor"] == "tensorflow (keras)"
        assert cards["TFK"]["labels"]["mlflow_stage"] == "Production"
        assert cards["TFM"]["metadata"]["mlflow_flavor"] == "tensorflow (tf2-module)"
        assert cards["TFM"]["metadata"]["source_format"] == "SavedModel"
    finally:
        stop_server(server.process)
