"""The panel fed from a real MLflow tracking server: PostgreSQL backend store (as seed 003 runs
MLflow), local artifact root, loopback.

The session's MLflow server (tests/integration/conftest.py), a model store for the module. A
Keras model for a sixth antibiotic (CIP, which no code names) is logged, registered and aliased,
imported through save_models.py, and joins the panel of a server already running; then version 2
is registered and imported: a candidate, served once promoted (a version pin in configuration
applies while no promotion is recorded). Last, `save_models.py sync` follows an alias: each
version it names imported once, then promoted. Every URI form and flavour:
test_mlflow_imports.py.

PostgreSQL comes from Debian's package (scripts/postgresql.sh, run by `make test`); where it
cannot be installed the module runs on SQLite, says so, and skips the PostgreSQL check.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, LiveServer, run_save_models, serve, stop_server
from tests.integration.conftest import Registry, empty_registry

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip(
    "mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)"
)

NAME = "modelo_CIP_NM"
N_FEATURES = 8
CLASSES = ["S", "I", "R"]


def register_version(bias: int, alias: str) -> str:
    """Log a tiny Keras model whose answer is class `bias`, register it, point `alias` at it."""
    return str(log_version(bias, alias).registered_model_version)


def log_version(bias: int, alias: str) -> Any:
    """As register_version, returning MLflow's ModelInfo (run id, model id, version)."""
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
    return info


def serve_store(home: str, tmp_path: Path, config: Path | None = None) -> LiveServer:
    log_path = tmp_path / "serve.log"
    extra = {"DESPLIEGUE_CONFIG": str(config)} if config else {}
    return serve(home, log_path, extra)


def pinned_config(tmp_path: Path, code: str, version: str) -> Path:
    raw = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    raw["families"]["antibiotics"]["versions"] = {code: version}
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def panel_server(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The registry's store served as shipped, started while its panel is still empty: the
    first antibiotic imported from the registry then joins the running panel."""
    server = serve_store(registry.home, tmp_path_factory.mktemp("panel"))
    try:
        yield server
    finally:
        stop_server(server.process)


def test_empty_panel_answers_4xx_with_instructions(panel_server: LiveServer) -> None:
    assert panel_server.get("/antibiotics").json()["antibiotics"] == []
    response = panel_server.post("/antibiotics", {"features": [0.0] * N_FEATURES})
    assert response.status_code == 404, response.text
    assert "no antibiotic model is served" in response.text
    assert "save_models.py import modelo_CODE_NM" in response.text


def wait_for_model(server: LiveServer, tag: str) -> dict:
    """CIP's answer once the running server answers with `tag` (it follows the state file)."""
    deadline = time.monotonic() + 60
    while (result := _answer_or_none(server)) is None or result["model"] != tag:
        assert time.monotonic() < deadline, result
        time.sleep(0.5)
    return result


def test_registry_import_is_served_and_pinned_by_configuration(
    registry: Registry, panel_server: LiveServer, tmp_path: Path
) -> None:
    first = register_version(bias=2, alias="champion")
    imported = run_save_models("import", NAME, f"models:/{NAME}@champion", home=registry.home)
    assert imported.returncode == 0, imported.stderr
    v1_tag = newest_tag(registry.home)
    # A new antibiotic's first import is served at once, by the server already running.
    assert wait_for_model(panel_server, v1_tag)["registered_version"] == first

    second = register_version(bias=0, alias="champion")
    imported = run_save_models("import", NAME, f"models:/{NAME}/{second}", home=registry.home)
    assert imported.returncode == 0, imported.stderr
    v2_tag = newest_tag(registry.home)
    assert v1_tag != v2_tag

    # Pinned to the first import: version 2 in the registry and in the store changes nothing.
    # (A copy of the store: one server per home, and the panel's server holds this one.)
    config = pinned_config(tmp_path, "CIP", v1_tag.partition(":")[2])
    pinned_home = tmp_path / "pinned" / "bentoml"
    shutil.copytree(Path(registry.home) / "models", pinned_home / "models")
    server = serve_store(str(pinned_home), tmp_path, config)
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
    assert _answer(panel_server)["model"] == v1_tag
    promoted = run_save_models(
        "promote", "antibiotics.CIP", v2_tag, "--why", "registry v2", home=registry.home
    )
    assert promoted.returncode == 0, promoted.stderr
    result = wait_for_model(panel_server, v2_tag)
    assert result["registered_version"] == second
    assert result["predictions"][0]["predicted_class"] == "S"


def test_registry_runs_on_postgresql(registry: Registry) -> None:
    """What MLflow registers lands in the PostgreSQL database the test started."""
    if registry.postgres_missing:
        pytest.skip(f"PostgreSQL cannot be used here: {registry.postgres_missing}")
    import psycopg2
    from sqlalchemy.engine import make_url

    version = register_version(bias=1, alias="postgres_check")
    url = make_url(registry.backend_store)
    assert url.drivername == "postgresql+psycopg2"
    with (
        psycopg2.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT version FROM model_versions WHERE name = %s", (NAME,))
        assert int(version) in {row[0] for row in cursor.fetchall()}


def newest_tag(home: str) -> str:
    """Tag of the newest stored version of modelo_CIP_NM (BentoML keeps names lower case)."""
    infos = [
        yaml.safe_load(p.read_text()) for p in Path(home).glob("models/modelo_cip_nm/*/model.yaml")
    ]
    newest = max(infos, key=lambda info: info["creation_time"])
    return f"{newest['name']}:{newest['version']}"


def _answer(server: LiveServer) -> dict:
    result = _answer_or_none(server)
    assert result is not None, "CIP is not served (404)"
    return result


def _answer_or_none(server: LiveServer) -> dict | None:
    """CIP's answer, or None while the server does not serve CIP yet (404)."""
    response = server.post("/antibiotics", {"features": [[0.5] * N_FEATURES], "codes": ["CIP"]})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result


# `save_models.py sync`: the panel follows `models:/modelo_<CODE>_NM@champion`, importing each
# version once and promoting it.


def following_config(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    raw["families"]["antibiotics"]["mlflow_alias"] = "champion"
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sync_imports_and_promotes_what_the_alias_names(registry: Registry, tmp_path: Path) -> None:
    home = str(tmp_path / "bentoml")
    env = {"DESPLIEGUE_CONFIG": str(following_config(tmp_path)), "DESPLIEGUE_OPERATOR": "cron"}

    def sync() -> str:
        result = run_save_models("sync", home=home, extra_env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return " ".join(result.stdout.split())

    def served() -> dict:
        return json.loads((tmp_path / "served.json").read_text())["families"]["antibiotics.CIP"]

    empty_registry()  # sync follows every panel model registered: only this test's
    first = register_version(bias=2, alias="champion")
    assert "promoted" in sync()
    v1 = served()["served"]
    (stored,) = (Path(home) / "models" / "modelo_cip_nm").glob("*/model.yaml")
    labels = yaml.safe_load(stored.read_text())["labels"]
    assert labels["mlflow_version"] == first and f"modelo_cip_nm:{stored.parent.name}" == v1

    assert "already served" in sync()  # nothing new: no second import, no history line
    assert len(list((Path(home) / "models" / "modelo_cip_nm").glob("*/model.yaml"))) == 1

    second = register_version(bias=0, alias="champion")
    assert "promoted" in sync()
    assert served()["previous"] == v1 and served()["served"] != v1
    lines = (tmp_path / "served-history.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["why"] == f"sync: models:/{NAME}@champion is version {second}"
    assert (last["who"], last["from"], last["to"]) == ("cron", v1, served()["served"])
