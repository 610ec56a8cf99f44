"""`bentoml build` makes one Bento holding the service code, configuration.yaml and every model."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.build


def bentoml_cli(*args: str, home: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": home}
    return subprocess.run(
        [str(BIN / "bentoml"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def built_bento(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = bentoml_cli("build", "--output", "tag", home=reference_store)
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    exported = tmp_path_factory.mktemp("bento") / "despliegue.bento"
    export = bentoml_cli("export", tag, str(exported), home=reference_store)
    assert export.returncode == 0, export.stderr[-3000:]
    return exported


def test_bento_holds_code_configuration_and_models(built_bento: Path) -> None:
    with tarfile.open(built_bento) as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        manifest = yaml.safe_load(archive.extractfile("./bento.yaml").read())
    for path in (
        "src/service.py",
        "src/configuration.yaml",
        "src/runners/heatflow.py",
        "src/runners/flowers.py",
        "src/runners/faces.py",
        "src/despliegue/images.py",
        "src/runners/antibiotics.py",
        "src/despliegue/families/data/falsetrue_corpus.csv",
        "src/despliegue/examples/face.jpg",  # the OpenAPI examples are read at import
        "src/despliegue/examples/flower.jpg",
    ):
        assert path in names, path
    assert not any(name.startswith("src/tests/") or "/.venv/" in name for name in names)
    packed_models = {name.split("/")[1] for name in names if name.startswith("models/")}
    assert {
        "heatflow_svr",
        "falsetrue_classifier",
        "flower_classifier",
        "face_detector",
        "face_validator",
        *(f"modelo_{code}_nm" for code in ("amk", "amp", "atm", "cas", "caz")),
    } <= packed_models
    detector_files = {name.rsplit("/", 1)[-1] for name in names if "/face_detector/" in name}
    assert {"mtcnn.json", "pnet.lz4", "rnet.lz4", "onet.lz4"} <= detector_files
    assert manifest["entry_service"] == "Despliegue"
    services = {service["name"]: service for service in manifest["services"]}
    assert services["Despliegue"]["config"]["runner_connection"]["max_requests"] == 1_000_000
    tags = [m["tag"] for service in manifest["services"] for m in service["models"]]
    assert all(":" in tag and not tag.endswith(":latest") for tag in tags)


def test_bento_locks_the_installed_bentoml(built_bento: Path) -> None:
    with tarfile.open(built_bento) as archive:
        requirements = archive.extractfile("./env/python/requirements.txt").read().decode()
    assert "bentoml==1.4.39" in requirements
    assert "tensorflow-cpu==" in requirements and "scikit-learn==" in requirements
    assert "mtcnn==1.0.0" in requirements
