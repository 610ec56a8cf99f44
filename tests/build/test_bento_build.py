"""`bentoml build` makes one Bento holding the service code, configuration.yaml, every model and
what the home it was built from serves (its lifecycle state)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import joblib
import pytest
import yaml
from sklearn.dummy import DummyRegressor

from despliegue import registry
from tests.conftest import (
    BIN,
    LIFECYCLE_STATE_ENV,
    ROOT,
    free_port,
    private_home,
    runner_apart_config,
    stop_server,
    wait_until_answers,
)

pytestmark = pytest.mark.build


def run(command: list[str], home: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it: on `home`, with the state where it lives by default."""
    env = {k: v for k, v in os.environ.items() if k != LIFECYCLE_STATE_ENV}
    env.update(BENTOML_HOME=home, DESPLIEGUE_OPERATOR="build-test")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def bentoml_cli(*args: str, home: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "bentoml"), *args], home)


@pytest.fixture(scope="module")
def promoted(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A home of its own where heatflow serves a promoted import: (home, promoted tag)."""
    folder = tmp_path_factory.mktemp("build-home")
    home = private_home(reference_store, folder)
    artifact = folder / "constant_7.joblib"
    joblib.dump(DummyRegressor(strategy="constant", constant=7.0).fit([[0.0]], [7.0]), artifact)
    save_models = [sys.executable, "save_models.py"]
    imported = run([*save_models, "import", "heatflow_svr", str(artifact)], home)
    assert imported.returncode == 0, imported.stderr
    tag = re.search(r"(heatflow_svr:\w+) is a candidate", " ".join(imported.stdout.split()))[1]
    done = run([*save_models, "promote", "heatflow", tag, "--why", "packed into the Bento"], home)
    assert done.returncode == 0, done.stderr
    return home, tag


@pytest.fixture(scope="module")
def built_bento(promoted: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    home, _ = promoted
    # As `make build` runs it: the home's state in the build context for the build only.
    build = [sys.executable, "-m", "despliegue.lifecycle.pack", str(BIN / "bentoml"), "build"]
    result = run([*build, "--output", "tag"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(ROOT.glob("served*")), "the packed state was left in the checkout"
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    exported = tmp_path_factory.mktemp("bento") / "despliegue.bento"
    export = bentoml_cli("export", tag, str(exported), home=home)
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
    # Every runner is a service of the Bento, also those answered inside the API worker by
    # default (`placement`): any of them can be started apart from the same image.
    assert {family.runner_class().name for family in registry.FAMILIES} <= services.keys()


def test_bento_locks_the_installed_bentoml(built_bento: Path) -> None:
    with tarfile.open(built_bento) as archive:
        requirements = archive.extractfile("./env/python/requirements.txt").read().decode()
    assert "bentoml==1.4.39" in requirements
    assert "tensorflow-cpu==" in requirements and "scikit-learn==" in requirements
    assert "mtcnn==1.0.0" in requirements


SERVED_FROM_THE_BENTO = """
import json
from despliegue.lifecycle import plans, state
heatflow = plans.plans()["heatflow"]
print(json.dumps([str(state.state_path()), heatflow.served, heatflow.source]))
"""


def test_the_bento_serves_what_was_promoted(
    built_bento: Path, promoted: tuple[str, str], tmp_path: Path
) -> None:
    home, tag = promoted
    with tarfile.open(built_bento) as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        archive.extractall(tmp_path / "bento", filter="data")
    bento = tmp_path / "bento"
    packed = json.loads((bento / "src" / "served.json").read_text())
    assert packed == json.loads((Path(home) / "served.json").read_text())
    assert packed["families"]["heatflow"]["served"] == tag
    assert "src/served-history.jsonl" in names
    name, version = tag.split(":")
    assert f"models/{name}/{version}/model.yaml" in names

    # Read as a server started from the Bento reads it, on a home holding no state of its own.
    other_home = str(tmp_path / "another-home")
    script = [sys.executable, "-c", SERVED_FROM_THE_BENTO]
    result = run(script, other_home, cwd=bento / "src")
    assert result.returncode == 0, result.stderr[-3000:]
    state_file, served, source = json.loads(result.stdout.splitlines()[-1])
    assert state_file == str(bento / "src" / "served.json")
    assert (served, source) == (tag, "state file")


def test_a_runner_answered_in_the_api_starts_apart_from_the_bento(
    built_bento: Path, promoted: tuple[str, str], tmp_path: Path
) -> None:
    """As a split deployment's runner pod starts the image: `despliegue.serving` on the Bento,
    the one tier named, with a configuration that places heat flow in a process of its own."""
    home, tag = promoted
    with tarfile.open(built_bento) as archive:
        archive.extractall(tmp_path / "bento", filter="data")
    bento = tmp_path / "bento"
    port, log_path = free_port(), tmp_path / "runner.log"
    env = {k: v for k, v in os.environ.items() if k != LIFECYCLE_STATE_ENV}
    env.update(
        BENTOML_HOME=home,
        DESPLIEGUE_SERVICE="HeatFlowRegressor",
        DESPLIEGUE_CONFIG=str(runner_apart_config(tmp_path, "heatflow")),
        PYTHONPATH=str(bento / "src"),
    )
    command = [sys.executable, "-m", "despliegue.serving", str(bento), "--port", str(port)]
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            [*command, "--host", "127.0.0.1"],
            cwd=bento / "src",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/readyz", runner, log_path, within_s=180)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"sediment_thickness_m": [100.0]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert tag in answer.text  # the promoted model packed into the Bento answered
    finally:
        stop_server(runner)
