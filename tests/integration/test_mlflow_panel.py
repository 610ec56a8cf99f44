"""The panel fed from a real MLflow tracking server (sqlite store, local artifacts, loopback).

One MLflow server and one model store per module. A Keras model for a sixth antibiotic
(CIP, which no code names) is logged, registered and aliased, imported through
save_models.py, and served; then version 2 is registered and imported: a candidate, served
once promoted (a version pin in configuration applies while no promotion is recorded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import (
    BIN,
    ROOT,
    LiveServer,
    free_port,
    run_save_models,
    start_server,
    stop_server,
    wait_until_serving,
)

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip(
    "mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)"
)

NAME = "modelo_CIP_NM"
N_FEATURES = 8
CLASSES = ["S", "I", "R"]


@dataclass
class Registry:
    url: str
    home: str


@pytest.fixture(scope="module")
def registry(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A live `mlflow server` and a model store holding only the non-antibiotic references
    (copied from the session's reference store, so nothing is trained twice)."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (folder / "mlflow.log").open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(folder / "artifacts"),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = url
    try:
        _wait_for(url, process, folder / "mlflow.log")
        mlflow.set_tracking_uri(url)
        home = str(tmp_path_factory.mktemp("store") / "bentoml")
        shutil.copytree(
            Path(reference_store) / "models",
            Path(home) / "models",
            ignore=shutil.ignore_patterns("modelo_*"),
        )
        yield Registry(url=url, home=home)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
        stop_server(process)
        log.close()


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not ready in 120 s:\n{log.read_text()[-3000:]}")


def register_version(bias: int, alias: str) -> str:
    """Log a tiny Keras model whose answer is class `bias`, register it, point `alias` at it."""
    import keras

    model = keras.Sequential(
        [keras.Input((N_FEATURES,)), keras.layers.Dense(len(CLASSES), activation="softmax")]
    )
    weights, biases = model.layers[0].get_weights()
    biases[:] = -5.0
    biases[bias] = 5.0
    model.layers[0].set_weights([np.zeros_like(weights), biases])
    with mlflow.start_run():
        info = mlflow.keras.log_model(
            model,
            name="model",
            registered_model_name=NAME,
            metadata={"classes": CLASSES, "features": [f"gene_{i}" for i in range(N_FEATURES)]},
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(NAME, alias, version)
    return version


def serve(registry: Registry, tmp_path: Path, config: Path | None = None) -> LiveServer:
    log_path = tmp_path / "serve.log"
    extra = {"DESPLIEGUE_CONFIG": str(config)} if config else {}
    process = start_server(registry.home, log_path, extra)
    url = f"http://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    server = LiveServer(url=url, log_path=log_path, process=process)
    try:
        wait_until_serving(url, process, log_path)
    except BaseException:
        stop_server(process)
        raise
    return server


def pinned_config(tmp_path: Path, code: str, version: str) -> Path:
    raw = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    raw["families"]["antibiotics"]["versions"] = {code: version}
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_empty_panel_answers_4xx_with_instructions(registry: Registry, tmp_path: Path) -> None:
    server = serve(registry, tmp_path)
    try:
        assert server.get("/antibiotics").json()["antibiotics"] == []
        response = server.post("/antibiotics", {"features": [0.0] * N_FEATURES})
        assert response.status_code == 404, response.text
        assert "no antibiotic model is served" in response.text
        assert "save_models.py import modelo_CODE_NM" in response.text
    finally:
        stop_server(server.process)


def test_registry_import_is_served_and_pinned_by_configuration(
    registry: Registry, tmp_path: Path
) -> None:
    first = register_version(bias=2, alias="champion")
    imported = run_save_models("import", NAME, f"models:/{NAME}@champion", home=registry.home)
    assert imported.returncode == 0, imported.stderr
    v1_tag = newest_tag(registry.home)

    second = register_version(bias=0, alias="champion")
    imported = run_save_models("import", NAME, f"models:/{NAME}/{second}", home=registry.home)
    assert imported.returncode == 0, imported.stderr
    v2_tag = newest_tag(registry.home)
    assert v1_tag != v2_tag

    # Pinned to the first import: version 2 in the registry and in the store changes nothing.
    config = pinned_config(tmp_path, "CIP", v1_tag.partition(":")[2])
    server = serve(registry, tmp_path, config)
    try:
        panel = server.get("/antibiotics").json()["antibiotics"]
        assert [entry["code"] for entry in panel] == ["CIP"]
        (entry,) = panel
        assert entry["model"] == v1_tag and entry["input_length"] == N_FEATURES
        assert entry["source"]["source"] == "mlflow"
        assert entry["source"]["mlflow_version"] == first
        assert entry["source"]["mlflow_alias"] == "champion"
        assert entry["features"][0] == "gene_0"
        result = _answer(server)
        assert result["model"] == v1_tag and result["registered_version"] == first
        assert result["predictions"][0]["predicted_class"] == "R"
        card = next(m for m in server.get("/models").json()["models"] if m["tag"] == v1_tag)
        assert card["metadata"]["mlflow_run_id"] == card["labels"]["mlflow_run_id"]
        assert card["metadata"]["mlflow_uri"] == f"models:/{NAME}@champion"
        wrong = server.post("/antibiotics", {"features": [0.0] * 16, "codes": ["CIP"]})
        assert wrong.status_code == 422 and "expects 8 values, got 16" in wrong.text
    finally:
        stop_server(server.process)

    # Without the pin, still the first import: the second is a candidate until promoted; the
    # running server then follows the promotion.
    server = serve(registry, tmp_path)
    try:
        assert _answer(server)["model"] == v1_tag
        promoted = run_save_models(
            "promote", "antibiotics.CIP", v2_tag, "--why", "registry v2", home=registry.home
        )
        assert promoted.returncode == 0, promoted.stderr
        deadline = time.monotonic() + 60
        while (result := _answer(server))["model"] != v2_tag:
            assert time.monotonic() < deadline, result
            time.sleep(0.5)
        assert result["registered_version"] == second
        assert result["predictions"][0]["predicted_class"] == "S"
    finally:
        stop_server(server.process)


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
    home = str(tmp_path / "bentoml")
    missing = run_save_models("import", NAME, f"models:/{NAME}@no_such_alias", home=home)
    assert missing.returncode == 1 and "not found in the registry" in missing.stderr
    bad_name = run_save_models("import", "modelo_cip", f"models:/{NAME}/1", home=home)
    assert bad_name.returncode == 1 and "unknown model name" in bad_name.stderr
    assert not (Path(home) / "models").exists() or not any((Path(home) / "models").iterdir())


def newest_tag(home: str) -> str:
    """Tag of the newest stored version of modelo_CIP_NM (BentoML keeps names lower case)."""
    infos = [
        yaml.safe_load(p.read_text()) for p in Path(home).glob("models/modelo_cip_nm/*/model.yaml")
    ]
    newest = max(infos, key=lambda info: info["creation_time"])
    return f"{newest['name']}:{newest['version']}"


def _answer(server: LiveServer) -> dict:
    response = server.post("/antibiotics", {"features": [[0.5] * N_FEATURES], "codes": ["CIP"]})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result
